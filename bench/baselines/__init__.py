"""Baseline workers the project is compared against, each as small as its users write it."""
