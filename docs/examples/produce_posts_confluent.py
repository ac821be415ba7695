"""The same with confluent-kafka (librdkafka): send the post/v1 records of a JSON-lines file to the posts topic.

    python produce_posts_confluent.py BOOTSTRAP posts.jsonl [TOPIC]
"""

import json
import sys

from confluent_kafka import Producer


def main(bootstrap: str, path: str, topic: str = "posts") -> int:
    # message.max.bytes is librdkafka's largest request (1 MB by default); posts may be up to 8 MiB. murmur2: the
    # partitions Java clients and kafka-python choose for a key, so one post's records share a partition.
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "message.max.bytes": 8 * 1024 * 1024 + 65536,
                         "partitioner": "murmur2_random"})
    failed = []

    def delivered(error, message) -> None:
        if error is not None:
            failed.append(message.key().decode())

    with open(path, encoding="utf-8") as lines:
        for line in filter(str.strip, lines):
            producer.produce(topic, key=json.loads(line)["post_id"], value=line.strip(), on_delivery=delivered)
            producer.poll(0)
    left = producer.flush(60)
    print(f"not delivered: {failed or 'none'}; unanswered: {left}")
    return 1 if failed or left else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
