"""The Redis broker's reliable fetch (brokers/redis_transport.py) against a real Redis.

Taking a message records it as in hand in the same step; an ack, a reject and a closing
channel each end that record; a holder whose heartbeat lapsed has its messages put back
(or parked, at the delivery limit) by the next live worker's heartbeat; a stuck holder
still meets the visibility timeout. What producers write does not change: a stock
kombu producer's message is taken like any other.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.transport import redis as kombu_redis

from brokers import redis_scripts as keys
from brokers import redis_transport
from brokers.redis import RedisBroker
from redisconn import RedisTarget
from tests.support.celery_worker import wait_for

QUEUE = "transport-test"


@pytest.fixture
def connect(redis_url: str, reliable_transport: None) -> Iterator[object]:
    """Open connections with the reliable fetch, closed after the test."""
    made: list[Connection] = []

    def make(**options: object) -> Connection:
        connection = Connection(redis_url, transport_options=options)
        made.append(connection)
        return connection

    yield make
    for connection in made:
        connection.release()


def one_at_a_time(connection: Connection) -> object:
    """A SimpleQueue whose consumer holds one message at a time (prefetch 1)."""
    queue = connection.SimpleQueue(QUEUE)
    queue.channel.basic_qos(0, 1, False)
    return queue


def inhand(client: redis.Redis, channel: object) -> dict[str, str]:
    return client.hgetall(keys.INHAND_PREFIX + channel.holder)  # type: ignore[attr-defined]


def dies(client: redis.Redis, channel: object) -> None:
    """The holder of `channel` falls silent, its last heartbeat long ago."""
    channel._stop_heartbeat()  # type: ignore[attr-defined]
    client.zadd(keys.HOLDERS, {channel.holder: 0})  # type: ignore[attr-defined]


def judges(channel: object) -> None:
    """Two heartbeats of a live channel: the first registers it (a first heartbeat has
    no previous one to trust its view by), the second judges the others."""
    channel.heartbeat()  # type: ignore[attr-defined]
    channel.heartbeat()  # type: ignore[attr-defined]


def test_a_taken_message_is_recorded_as_in_hand_in_the_same_step(
    connect, redis_client: redis.Redis
) -> None:
    """The message leaves the list and appears in the holder's hash, byte for byte; the
    holder is registered with a heartbeat."""
    queue = one_at_a_time(connect())
    queue.put({"n": 1})
    raw = redis_client.lindex(QUEUE, 0)
    message = queue.get(timeout=5)
    channel = message.channel
    assert redis_client.llen(QUEUE) == 0
    held = inhand(redis_client, channel)
    assert list(held.values()) == [raw]
    assert list(held) == [message.delivery_tag]
    assert message.delivery_tag.endswith(":" + QUEUE)
    assert redis_client.zscore(keys.HOLDERS, channel.holder) is not None
    message.ack()
    channel.acks.drain()
    assert inhand(redis_client, channel) == {}


def test_reject_with_requeue_puts_the_message_back_at_the_head(
    connect, redis_client: redis.Redis
) -> None:
    """A requeued message is the next one taken, ahead of those that waited."""
    queue = one_at_a_time(connect())
    for number in range(3):
        queue.put({"n": number})
    first = queue.get(timeout=5)
    assert first.payload == {"n": 0}
    first.requeue()
    assert inhand(redis_client, first.channel) == {}
    assert queue.get(timeout=5).payload == {"n": 0}


def test_a_closing_channel_hands_back_what_it_holds_and_leaves(
    connect, redis_client: redis.Redis
) -> None:
    """Unacknowledged messages return to the queue when their channel closes; acked
    ones do not, even with their ack still in the buffer."""
    connection = connect()
    queue = connection.SimpleQueue(QUEUE)
    for number in range(3):
        queue.put({"n": number})
    taken = [queue.get(timeout=5) for _ in range(3)]
    holder = taken[0].channel.holder
    taken[0].ack()  # may still be in the ack buffer as the channel closes
    connection.release()
    assert redis_client.llen(QUEUE) == 2
    assert redis_client.zscore(keys.HOLDERS, holder) is None
    assert not redis_client.exists(keys.INHAND_PREFIX + holder)


def test_a_dead_holders_messages_go_back_at_the_next_heartbeat(
    connect, redis_client: redis.Redis
) -> None:
    """A holder whose heartbeat lapsed: a live channel's heartbeat puts its messages back
    at the head of their queue and counts one delivery for each."""
    dead = connect().SimpleQueue(QUEUE)
    for number in range(2):
        dead.put({"n": number})
    taken = [dead.get(timeout=5) for _ in range(2)]
    holder = taken[0].channel.holder
    dies(redis_client, taken[0].channel)

    live = connect(heartbeat_timeout=5).default_channel
    judges(live)
    assert redis_client.llen(QUEUE) == 2
    assert not redis_client.exists(keys.INHAND_PREFIX + holder)
    assert redis_client.zscore(keys.HOLDERS, holder) is None
    assert sorted(int(count) for count in redis_client.hvals(keys.DELIVERIES)) == [1, 1]
    # The holder's own acks, arriving late, change nothing.
    taken[0].ack()
    taken[0].channel.acks.drain()
    assert redis_client.llen(QUEUE) == 2


def test_a_message_that_keeps_losing_its_holder_is_parked_at_the_limit(
    connect, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delivery limit 2: the first two dead holders return the message to its queue, the
    third parks it in `{queue}.dead` (RabbitMQ's count), and `on_parked` hears of it."""
    parked: list[tuple[str, bytes, int]] = []
    # Only this test's callback: the worker's (a failure record in the results Redis of
    # the default settings) is not under test here, and must not run.
    monkeypatch.setattr(redis_transport, "on_parked", [lambda *found: parked.append(found)])
    producer = one_at_a_time(connect())
    producer.put({"poison": True})
    raw = redis_client.lindex(QUEUE, 0)
    live = connect(delivery_limit=2).default_channel
    live.heartbeat()
    for _ in range(3):
        holder = one_at_a_time(connect())
        message = holder.get(timeout=5)
        dies(redis_client, message.channel)
        live.heartbeat()
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.lrange(QUEUE + keys.DEAD_SUFFIX, 0, -1) == [raw]
    assert redis_client.hvals(keys.PARKED_INFO) == ["3"]
    assert redis_client.hlen(keys.DELIVERIES) == 0
    assert [(queue, item.decode(), count) for queue, item, count in parked] == [(QUEUE, raw, 3)]


def test_an_acknowledged_message_forgets_its_delivery_count(
    connect, redis_client: redis.Redis
) -> None:
    """A message whose holder died once, then acknowledged by the next: no count stays."""
    queue = one_at_a_time(connect())
    queue.put({"n": 1})
    first = queue.get(timeout=5)
    dies(redis_client, first.channel)
    live = connect()
    judges(live.default_channel)
    assert redis_client.hlen(keys.DELIVERIES) == 1
    again = one_at_a_time(live).get(timeout=5)
    again.ack()
    again.channel.acks.drain()
    assert redis_client.hlen(keys.DELIVERIES) == 0


def test_a_live_holder_still_meets_the_visibility_timeout(
    connect, redis_client: redis.Redis
) -> None:
    """The backstop for a holder alive but stuck: a message held past the visibility
    timeout goes back to its queue, counting a delivery (as a quorum queue counts a
    consumer timeout)."""
    queue = one_at_a_time(connect(visibility_timeout=1))
    queue.put({"n": 1})
    message = queue.get(timeout=5)

    def overdue() -> bool:
        message.channel.restore_overdue()
        return redis_client.llen(QUEUE) == 1

    wait_for(overdue, timeout=5, what="the held message back after 1 s")
    assert inhand(redis_client, message.channel) == {}
    assert redis_client.hvals(keys.DELIVERIES) == ["1"]


def test_one_fetch_takes_a_batch_turn_by_turn_across_queues(redis_client: redis.Redis) -> None:
    """The fetch script takes up to the asked number in one call, one from each queue in
    turn, so a long queue does not starve a short one."""
    redis_client.lpush("a", *[f"a{n}" for n in range(5)])
    redis_client.lpush("b", "b0")
    script = redis_client.register_script(keys.FETCH)
    reply = script(keys=[keys.HOLDERS, keys.INHAND_PREFIX + "h", keys.SEQUENCE, "a", "b"],
                   args=["h", 4, 2])  # fmt: skip
    items = reply[2::3]
    assert items == ["a0", "b0", "a1", "a2"]  # oldest first, queues in turn
    assert redis_client.hlen(keys.INHAND_PREFIX + "h") == 4
    assert redis_client.llen("a") == 2


def test_a_stock_kombu_producers_message_is_taken(
    connect, redis_url: str, redis_client: redis.Redis
) -> None:
    """A producer on kombu's own Redis transport (no project code) LPUSHes as always;
    the reliable consumer takes and acknowledges its message."""
    parts = urlsplit(redis_url)
    stock = Connection(
        hostname=parts.hostname, port=parts.port, virtual_host=parts.path.lstrip("/") or "0",
        transport=kombu_redis.Transport,
    )  # fmt: skip
    try:
        stock.SimpleQueue(QUEUE).put({"from": "stock"})
    finally:
        stock.release()
    message = one_at_a_time(connect()).get(timeout=5)
    assert message.payload == {"from": "stock"}
    message.ack()


def test_a_channel_reuses_one_command_client(redis_url: str, connect) -> None:
    """kombu would build a `redis.Redis` per command; the channel builds one per pool,
    and a new one once its pool is replaced."""
    channel = connect().default_channel
    with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
        assert first is second
        assert first.connection_pool is channel.pool
        assert first.ping()
    given = redis.Redis.from_url(redis_url)
    with channel.conn_or_acquire(given) as passed:
        assert passed is given
    given.close()
    channel._pool = None  # what kombu does when the channel closes
    with channel.conn_or_acquire() as third:
        assert third is not first
        assert third.connection_pool is channel.pool


def test_a_detached_channel_raises_a_connection_error_that_closing_ignores(connect) -> None:
    """After a lost connection kombu detaches the transport, then closes the channel
    again to hand its messages back: a connection error, not an AttributeError."""
    connection = connect()
    channel = connection.default_channel
    channel._pool = None
    channel.connection.client = None  # what kombu's collect() leaves behind
    with pytest.raises(redis.ConnectionError), channel.conn_or_acquire():
        pass
    assert issubclass(redis.ConnectionError, connection.connection_errors)


def test_messages_held_when_redis_was_unreachable_go_back_when_the_worker_reconnects(
    connect, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A channel that cannot hand back as it closes leaves its holder to the process: the
    next channel's first heartbeat hands the messages back, with no delivery counted and
    without waiting for the heartbeat to lapse."""
    queue = one_at_a_time(connect())
    queue.put({"n": 1})
    message = queue.get(timeout=5)
    channel = message.channel
    real_run = channel._run

    def unreachable(name: str, *args: object) -> object:
        if name == "RELEASE":
            raise redis.ConnectionError("Connection closed by server.")
        return real_run(name, *args)

    monkeypatch.setattr(channel, "_run", unreachable)
    channel.close()
    assert redis_client.llen(QUEUE) == 0  # still recorded as in hand
    connect().default_channel.heartbeat()
    assert redis_client.llen(QUEUE) == 1
    assert redis_client.hlen(keys.DELIVERIES) == 0
    assert not redis_client.exists(keys.INHAND_PREFIX + channel.holder)


def test_kombus_own_unacked_records_from_an_earlier_release_are_restored(
    connect, redis_client: redis.Redis
) -> None:
    """A worker of an earlier release, killed with a message in kombu's `unacked` hash:
    the visibility sweep of the new transport returns it to its queue, as kombu would."""
    envelope = {
        "body": "e30=", "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {}, "properties": {"body_encoding": "base64", "delivery_tag": "old-1",
                                      "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE}},
    }  # fmt: skip
    connection = connect(visibility_timeout=60)
    channel = connection.default_channel
    # The exchange and binding the worker declares, so the record's exchange routes.
    Queue(QUEUE, Exchange(QUEUE, type="direct"), routing_key=QUEUE)(channel).declare()
    redis_client.hset("unacked", "old-1", json.dumps([envelope, QUEUE, QUEUE]))
    redis_client.zadd("unacked_index", {"old-1": 1})  # taken long ago
    channel.qos.restore_visible()
    assert redis_client.llen(QUEUE) == 1
    assert redis_client.hlen("unacked") == 0


def test_a_redis_that_forgot_the_scripts_is_taught_them_again(
    connect, redis_client: redis.Redis
) -> None:
    """A restarted Redis knows no script: the first call meets NOSCRIPT, loads them and
    goes on, for the consumer's fetch and for an ack alike."""
    queue = one_at_a_time(connect())
    queue.put({"n": 1})
    redis_client.script_flush()
    message = queue.get(timeout=5)
    redis_client.script_flush()
    message.ack()
    message.channel.acks.drain()
    assert inhand(redis_client, message.channel) == {}


def test_a_channel_heartbeats_on_its_own_thread_from_its_first_fetch_until_it_leaves(
    connect, redis_client: redis.Redis
) -> None:
    """No event loop runs here: the holder's heartbeat still advances, on a thread of its
    own, and stops once the channel has handed back and left."""
    queue = one_at_a_time(connect(heartbeat_interval=0.1))
    queue.put({"n": 1})
    message = queue.get(timeout=5)
    channel = message.channel
    first = redis_client.zscore(keys.HOLDERS, channel.holder)
    wait_for(lambda: redis_client.zscore(keys.HOLDERS, channel.holder) > first, timeout=5,
             what="a heartbeat with no event loop running")  # fmt: skip
    heartbeat = channel._heartbeat
    assert heartbeat is not None
    assert heartbeat.alive
    channel.close()
    assert not heartbeat.alive
    assert redis_client.zscore(keys.HOLDERS, channel.holder) is None


def test_a_channel_that_only_reads_replies_runs_no_heartbeat_and_judges_no_worker(
    connect, redis_client: redis.Redis
) -> None:
    """A producer that asks workers a question (`control.ping` as it starts a worker,
    `inspect`) reads the replies without acknowledging them: it holds no job, so it
    runs no heartbeat, and a dead worker's message is put back or parked by the
    workers' delivery limit, never by the asker's."""
    held = one_at_a_time(connect())
    held.put({"n": 1})
    message = held.get(timeout=5)
    dies(redis_client, message.channel)
    asker = connect(heartbeat_interval=0.05, heartbeat_timeout=0.5, delivery_limit=5)
    replies = asker.SimpleQueue("transport-test-replies", no_ack=True)
    replies.put({"ok": True})
    assert replies.get(timeout=5).payload == {"ok": True}
    assert replies.channel._heartbeat is None
    assert len(inhand(redis_client, message.channel)) == 1  # nobody judged the dead one


def test_a_holder_whose_own_heartbeat_is_as_old_as_the_others_rescues_nobody(
    connect, redis_client: redis.Redis
) -> None:
    """Redis paused 7 s (a `DEBUG SLEEP`, a fork, a failover): every heartbeat is 7 s old
    when it ends, the rescuer's own too. Its view is stale, so it only beats; the other
    holder's messages stay where they are."""
    other = one_at_a_time(connect())
    other.put({"n": 1})
    held = other.get(timeout=5)
    held.channel._stop_heartbeat()
    rescuer = connect(heartbeat_timeout=5).default_channel
    rescuer.heartbeat()
    now_ms = int(redis_client.time()[0]) * 1000
    paused = {held.channel.holder: now_ms - 7000, rescuer.holder: now_ms - 7000}
    redis_client.zadd(keys.HOLDERS, paused)
    rescuer.heartbeat()
    assert len(inhand(redis_client, held.channel)) == 1
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.hlen(keys.DELIVERIES) == 0


def test_a_holder_declared_dead_says_so_and_does_not_run_the_rest_of_its_batch(
    connect, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder paused past the timeout was rescued by a live one. Its next heartbeat
    learns it and logs it as an error; a batch it is delivering stops there, and its
    messages are the rescuer's queue's again, each once."""
    queue = connect().SimpleQueue(QUEUE)
    for number in range(3):
        queue.put({"n": number})
    paused = connect().default_channel
    paused._start_heartbeat()
    paused._stop_heartbeat()  # paused: no beat until it resumes
    paused._consumed = True
    reply = paused._run("FETCH", [keys.HOLDERS, keys.INHAND_PREFIX + paused.holder,
                                  keys.SEQUENCE, QUEUE], [paused.holder, 3, 1])  # fmt: skip
    dies(redis_client, paused)
    judges(connect().default_channel)
    assert redis_client.llen(QUEUE) == 3
    delivered: list[object] = []

    def deliver(payload: object, queue: str) -> None:
        delivered.append(payload)
        paused.heartbeat()  # the heartbeat thread resumes while the first job runs

    paused.connection._callbacks[QUEUE] = lambda message: None
    paused.connection._deliver = deliver
    paused._fetch_keys = [QUEUE]
    with caplog.at_level("ERROR", logger="brokers.redis_transport"):
        paused._deliver_batch(reply)
    assert len(delivered) == 1
    assert "declared dead" in caplog.text
    assert redis_client.llen(QUEUE) == 3  # neither lost nor put back a second time
    assert redis_client.zscore(keys.RESCUED, paused.holder) is None


def test_an_idle_fetch_writes_nothing(redis_client: redis.Redis) -> None:
    """A fetch that finds every queue empty leaves Redis as it was: no heartbeat, no
    counter; an idle fleet's only writes are its heartbeats."""
    script = redis_client.register_script(keys.FETCH)
    assert script(keys=[keys.HOLDERS, keys.INHAND_PREFIX + "h", keys.SEQUENCE, "a"],
                  args=["h", 4, 1]) == []  # fmt: skip
    assert redis_client.keys("*") == []


def test_thousands_of_acks_reach_redis_in_chunks(connect, redis_client: redis.Redis) -> None:
    """More acks than Lua's `unpack` takes in one call: all of them reach Redis."""
    channel = connect().default_channel
    fields = [f"1:1.{n}:{QUEUE}" for n in range(9000)]
    redis_client.hset(keys.INHAND_PREFIX + channel.holder, mapping=dict.fromkeys(fields, "x"))
    channel._consumed = True
    for field in fields:
        channel.acks.add(field)
    wait_for(lambda: channel.acks.pending == 0 and channel.acks.drain(), timeout=10,
             what="every ack sent")  # fmt: skip
    assert inhand(redis_client, channel) == {}


@pytest.mark.parametrize("priority", [0, 9])
def test_a_parked_message_lands_under_its_base_queue_and_replays_where_it_came_from(
    connect, redis_url: str, redis_client: redis.Redis, priority: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A message of a priority list parked at the delivery limit is in `{queue}.dead`,
    where `apiworker dead-letters` and the depth gauges look; a replay puts it back on
    the list it was taken from."""
    monkeypatch.setattr(redis_transport, "on_parked", [])
    producer = connect().SimpleQueue(QUEUE)
    producer.put({"n": 1}, priority=priority)
    source = [key for key in redis_client.keys(QUEUE + "*")]
    assert len(source) == 1
    live = connect(delivery_limit=0).default_channel
    live.heartbeat()
    holder = one_at_a_time(connect()).get(timeout=5)
    dies(redis_client, holder.channel)
    live.heartbeat()
    assert redis_client.llen(QUEUE + keys.DEAD_SUFFIX) == 1
    broker = RedisBroker(RedisTarget.from_url(redis_url))
    try:
        [depth] = broker.depths([QUEUE])
        assert depth.dead == 1
        assert [parked.deliveries for parked in broker.parked([QUEUE], 10)] == [1]
        assert len(broker.replay_parked([QUEUE], None)) == 1
    finally:
        broker.close()
    assert redis_client.llen(source[0]) == 1
    assert redis_client.llen(QUEUE + keys.DEAD_SUFFIX) == 0


def test_a_reject_with_requeue_counts_a_delivery_and_parks_past_the_limit(
    connect, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose process dies in a way that rejects it with requeue (a prefork child
    killed by the OOM killer) counts each time, as a quorum queue does: with limit 1,
    the second such delivery parks it instead of looping."""
    parked: list[tuple[str, bytes, int]] = []
    monkeypatch.setattr(redis_transport, "on_parked", [lambda *found: parked.append(found)])
    queue = one_at_a_time(connect(delivery_limit=1))
    queue.put({"n": 1})
    queue.get(timeout=5).requeue()
    assert redis_client.llen(QUEUE) == 1
    queue.get(timeout=5).requeue()
    assert redis_client.llen(QUEUE) == 0
    assert redis_client.llen(QUEUE + keys.DEAD_SUFFIX) == 1
    assert [(name, count) for name, _item, count in parked] == [(QUEUE, 2)]


def test_a_closing_channel_hands_back_messages_taken_but_not_yet_delivered(
    connect, redis_client: redis.Redis
) -> None:
    """Taken by a fetch whose reply was not yet delivered (kombu's delivered list is
    empty): closing still hands them back, with no delivery counted."""
    connection = connect()
    connection.SimpleQueue(QUEUE).put({"n": 1})
    channel = connection.channel()
    channel._consumed = True
    channel._run("FETCH", [keys.HOLDERS, keys.INHAND_PREFIX + channel.holder, keys.SEQUENCE,
                           QUEUE], [channel.holder, 1, 1])  # fmt: skip
    assert redis_client.llen(QUEUE) == 0
    channel.close()
    assert redis_client.llen(QUEUE) == 1
    assert not redis_client.exists(keys.INHAND_PREFIX + channel.holder)
    assert redis_client.hlen(keys.DELIVERIES) == 0


def test_the_fetch_floor_comes_from_free_execution_slots(
    connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 threads, prefetch multiplier 1, 17 running and 15 countdowns held (Celery's
    prefetch count grows by one for each): 15 threads are free, so the next fetch is
    not held back for half of an inflated prefetch."""
    channel = connect().default_channel
    channel.qos.prefetch_count = 32 + 15
    for number in range(17 + 15):
        channel.qos._delivered[f"tag-{number}"] = object()
    monkeypatch.setattr(redis_transport, "free_slots", lambda: 15)
    assert channel._batch_floor() == 1
    monkeypatch.setattr(redis_transport, "free_slots", lambda: 0)
    assert channel._batch_floor() == (32 + 15) // 2


def test_admission_leaves_a_held_upstreams_jobs_in_the_broker(
    connect, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With tasks.held.* held (their upstream has no budget), a fetch skips their queue,
    moves their job met in the shared queue to the head of their own, and takes the
    other job behind it."""
    monkeypatch.setattr(
        redis_transport, "admission", lambda: ([("tasks.held.", "held-queue")], None)
    )
    with connect() as connection:
        producer = connection.Producer()
        for task in ("tasks.held.fetch", "tasks.other.fetch"):
            producer.publish({"task": task}, routing_key=QUEUE, headers={"task": task})
        producer.publish({"n": 0}, routing_key="held-queue", headers={"task": "tasks.held.x"})
        queue = connection.SimpleQueue(QUEUE)
        message = queue.get(timeout=5)
        assert message.headers["task"] == "tasks.other.fetch"
        message.ack()
        waiting = [
            json.loads(item)["headers"]["task"] for item in redis_client.lrange("held-queue", 0, -1)
        ]
        assert waiting == ["tasks.held.x", "tasks.held.fetch"]  # moved to the head
        assert redis_client.llen(QUEUE) == 0
        queue.close()


def test_a_fetch_never_takes_a_held_upstreams_job_past_its_move_limit(
    redis_client: redis.Redis,
) -> None:
    """More held jobs in the shared queue than one fetch moves (a burst sent by name): the
    fetch moves its limit, leaves the next at the queue's head and takes none of them
    (taken, each would hold a thread while its token is seconds away), answering that
    more are left; the next fetch moves the rest and takes the job behind them."""

    def job(task: str) -> str:
        return json.dumps({"body": "", "headers": {"task": task}, "properties": {}})

    held = keys.MAX_MOVES + 2
    redis_client.lpush("shared", *[job("tasks.held.x") for _ in range(held)])
    redis_client.lpush("shared", job("tasks.other.fetch"))
    script = redis_client.register_script(keys.FETCH)

    def fetch() -> list[str]:
        reply: list[str] = script(
            keys=[keys.HOLDERS, keys.INHAND_PREFIX + "h", keys.SEQUENCE, "shared"],
            args=["h", 40, 1, "tasks.held.", "held-queue"],
        )
        return reply

    assert fetch() == [keys.MORE_TO_MOVE]
    assert redis_client.llen("held-queue") == keys.MAX_MOVES
    assert redis_client.hlen(keys.INHAND_PREFIX + "h") == 0
    taken = [json.loads(item)["headers"]["task"] for item in fetch()[2::3]]
    assert taken == ["tasks.other.fetch"]
    assert redis_client.llen("held-queue") == held
    assert redis_client.llen("shared") == 0
