// Send one job by task name with celery-node and print its result as JSON.
// Usage: node send_task.js BROKER_URL BACKEND_URL QUEUE TASK_NAME ARGS_JSON
const celery = require("celery-node");

const [brokerUrl, backendUrl, queue, taskName, argsJson] = process.argv.slice(2);
const client = celery.createClient(brokerUrl, backendUrl, queue);
const result = client.createTask(taskName).applyAsync(JSON.parse(argsJson));
const timer = setTimeout(() => {
  console.error("no result within 30 s");
  process.exit(1);
}, 30000);
result.get().then(
  (value) => {
    clearTimeout(timer);
    console.log(JSON.stringify(value));
    client.disconnect();
  },
  (error) => {
    console.error(String(error));
    process.exit(1);
  },
);
