// Read api-layer-worker results from another service, with ioredis.
//
//   node read_results.js get pokemon charizard        # a result and its metadata
//   node read_results.js follow my-service reader-1   # change events, in a consumer group
//
// REDIS_URL names the results Redis (default redis://localhost:6379/0); RESULT_KEY_PREFIX
// is the worker's key prefix, if it has one. Each output line is one JSON object.
const Redis = require("ioredis");

const PREFIX = process.env.RESULT_KEY_PREFIX || "";
const EVENTS = `${PREFIX}events:results`;

// Print the stored value of kind:ident and its metadata hash; 1 if none is stored.
async function get(client, kind, ident) {
  const value = await client.get(`${PREFIX}${kind}:${ident}`);
  if (value === null) {
    console.error(`no result at ${PREFIX}${kind}:${ident}`);
    return 1;
  }
  const meta = await client.hgetall(`${PREFIX}meta:${kind}:${ident}`);
  console.log(JSON.stringify({ value: JSON.parse(value), meta }));
  return 0;
}

// Print each event of the results stream once, acknowledging it after handling it.
// The group remembers what it has delivered, so a restarted reader goes on where it
// stopped: it first re-reads the entries it took but never acknowledged (id "0"), then
// waits for new ones (">"). `start` is where a new group begins: "$" (only new events)
// or "0" (the whole stream). `count` stops after that many events (0: never).
async function follow(client, group, consumer, count, start) {
  try {
    await client.xgroup("CREATE", EVENTS, group, start, "MKSTREAM");
  } catch (error) {
    if (!String(error).includes("BUSYGROUP")) throw error; // the group exists: keep its position
  }
  let handled = 0;
  let pending = true;
  while (!count || handled < count) {
    const cursor = pending ? "0" : ">";
    const replies = await client.xreadgroup(
      "GROUP", group, consumer, "COUNT", 10, "BLOCK", 5000, "STREAMS", EVENTS, cursor,
    );
    const entries = replies ? replies[0][1] : [];
    if (pending && entries.length === 0) {
      pending = false; // our unacknowledged entries are done: now the new ones
      continue;
    }
    for (const [entryId, flat] of entries) {
      const fields = {};
      for (let i = 0; i < flat.length; i += 2) fields[flat[i]] = flat[i + 1];
      console.log(JSON.stringify({ entry_id: entryId, ...fields }));
      await client.xack(EVENTS, group, entryId);
      handled += 1;
      if (count && handled >= count) break;
    }
  }
  return 0;
}

async function main(argv) {
  const client = new Redis(process.env.REDIS_URL || "redis://localhost:6379/0");
  try {
    if (argv.length === 3 && argv[0] === "get") return await get(client, argv[1], argv[2]);
    if (argv.length >= 3 && argv[0] === "follow") {
      const count = argv.includes("--count") ? Number(argv[argv.indexOf("--count") + 1]) : 0;
      const start = argv.includes("--from-start") ? "0" : "$";
      return await follow(client, argv[1], argv[2], count, start);
    }
    console.error("usage: node read_results.js get KIND ID | follow GROUP CONSUMER [--count N] [--from-start]");
    return 2;
  } finally {
    client.disconnect();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(String(error));
    process.exit(1);
  },
);
