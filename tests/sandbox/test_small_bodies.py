"""`--small-bodies`: every PokeAPI record cut to about 4 KB, same fields, over real HTTP."""

from __future__ import annotations

import json

import requests

from sandbox import SandboxServer
from sandbox.pokeapi import load_catalogue
from tasks.pokemon_record import pokemon_summary


def test_small_bodies_keep_every_field_and_weigh_about_4_kb() -> None:
    """Real and synthetic records come back 2-9 KB with every top-level key of the real one."""
    with SandboxServer(small_bodies=True) as server:
        for key in ("charizard", "pikachu", "mewtwo", "bulbasaur", "ivysaur", "10"):
            response = requests.get(
                f"{server.pokeapi_url}/pokemon/{key}",
                headers={"Accept-Encoding": "identity"},
                timeout=5,
            )
            assert response.status_code == 200
            assert 2_000 < len(response.content) < 9_000, (key, len(response.content))
            record = response.json()
            assert set(record) >= {"id", "name", "height", "weight", "sprites", "moves", "stats"}
            assert pokemon_summary(record)["name"] == record["name"]


def test_small_bodies_average_near_4_kb_over_the_real_records() -> None:
    """The sixteen real records, cut, weigh 3.5 to 5 KB on average."""
    with SandboxServer(small_bodies=True) as server:
        sizes = [
            len(
                requests.get(
                    f"{server.pokeapi_url}/pokemon/{pokemon_id}",
                    headers={"Accept-Encoding": "identity"},
                    timeout=5,
                ).content
            )
            for pokemon_id in load_catalogue().real
        ]
    assert 3_500 < sum(sizes) / len(sizes) < 5_000, sizes


def test_default_bodies_are_the_full_records() -> None:
    """Without the option charizard is the real record of more than 300 KB."""
    with SandboxServer() as server:
        body = requests.get(
            f"{server.pokeapi_url}/pokemon/charizard",
            headers={"Accept-Encoding": "identity"},
            timeout=5,
        ).content
    assert len(body) > 300_000
    assert json.loads(body)["name"] == "charizard"
