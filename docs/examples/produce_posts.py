"""Send the post/v1 records of a JSON-lines file to the posts topic with plain kafka-python (no stylestream code).

    python produce_posts.py BOOTSTRAP posts.jsonl [TOPIC]

Each post is keyed by its post_id. Exits 1 when the broker did not take a post.
"""

import json
import sys

from kafka import KafkaProducer


def main(bootstrap: str, path: str, topic: str = "posts") -> int:
    # Posts may be up to 8 MiB (STYLESTREAM_MAX_MESSAGE_BYTES); a producer sends 1 MiB at most by default.
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024 + 65536)
    sent = []
    with open(path, encoding="utf-8") as lines:
        for line in filter(str.strip, lines):
            post_id = json.loads(line)["post_id"]
            sent.append((post_id, producer.send(topic, key=post_id.encode(), value=line.strip().encode())))
    producer.flush()
    failed = [post_id for post_id, delivery in sent if delivery.failed()]
    producer.close()
    print(f"sent {len(sent) - len(failed)} posts; not delivered: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
