// Read api-layer-worker results from another service, with ioredis.
//
//   node read_results.js get pokemon charizard        # a result and its metadata
//   node read_results.js follow my-service reader-1   # change events, in a consumer group
//
// REDIS_URL names the results Redis (default redis://localhost:6379/0), or
// REDIS_CLUSTER_NODES (host:port,...) a Redis Cluster; RESULT_KEY_PREFIX and
// EVENTS_PARTITIONS are the worker's, if it sets them. Each output line is one JSON object.
const Redis = require("ioredis");

const PREFIX = process.env.RESULT_KEY_PREFIX || "";
const PARTITIONS = Number(process.env.EVENTS_PARTITIONS || "1");
// The change events: one stream, or one per partition (`events:results:{0}`, ...).
const STREAMS =
  PARTITIONS === 1
    ? [`${PREFIX}events:results`]
    : Array.from({ length: PARTITIONS }, (_, p) => `${PREFIX}events:results:{${p}}`);

// Print the stored value of kind:ident and its metadata hash; 1 if none is stored.
async function get(client, kind, ident) {
  const value = await client.get(`${PREFIX}${kind}:${ident}`);
  if (value === null) {
    console.error(`no result at ${PREFIX}${kind}:${ident}`);
    return 1;
  }
  // The metadata's hash tag is the whole value key: both live in one cluster slot.
  const meta = await client.hgetall(`${PREFIX}meta:{${PREFIX}${kind}:${ident}}`);
  console.log(JSON.stringify({ value: JSON.parse(value), meta }));
  return 0;
}

// Print each event of the results streams once, acknowledging it after handling it.
// Each stream has its own group of that name, read in turn (one stream per command, as a
// cluster needs). The group remembers what it has delivered, so a restarted reader goes
// on where it stopped: it first re-reads the entries it took but never acknowledged
// (id "0"), then takes new ones (">"). `start` is where a new group begins: "$" (only
// new events) or "0" (the whole stream). `count` stops after that many events (0: never).
async function follow(client, group, consumer, count, start) {
  for (const stream of STREAMS) {
    try {
      await client.xgroup("CREATE", stream, group, start, "MKSTREAM");
    } catch (error) {
      if (!String(error).includes("BUSYGROUP")) throw error; // the group exists: keep its position
    }
  }
  let handled = 0;
  const pending = new Map(STREAMS.map((stream) => [stream, true]));
  while (!count || handled < count) {
    let idle = true;
    for (const stream of STREAMS) {
      const cursor = pending.get(stream) ? "0" : ">";
      const replies = await client.xreadgroup(
        "GROUP", group, consumer, "COUNT", 10, "STREAMS", stream, cursor,
      );
      const entries = replies ? replies[0][1] : [];
      if (pending.get(stream) && entries.length === 0) {
        pending.set(stream, false); // our unacknowledged entries are done: new ones
        continue;
      }
      for (const [entryId, flat] of entries) {
        idle = false;
        const fields = {};
        for (let i = 0; i < flat.length; i += 2) fields[flat[i]] = flat[i + 1];
        console.log(JSON.stringify({ entry_id: entryId, stream, ...fields }));
        await client.xack(stream, group, entryId);
        handled += 1;
        if (count && handled >= count) return 0;
      }
    }
    if (idle) await new Promise((resolve) => setTimeout(resolve, 200)); // ask again shortly
  }
  return 0;
}

function connect() {
  const nodes = process.env.REDIS_CLUSTER_NODES;
  if (nodes) {
    const seeds = nodes.split(",").map((node) => {
      const at = node.lastIndexOf(":");
      return { host: node.slice(0, at), port: Number(node.slice(at + 1)) };
    });
    return new Redis.Cluster(seeds);
  }
  return new Redis(process.env.REDIS_URL || "redis://localhost:6379/0");
}

async function main(argv) {
  const client = connect();
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
