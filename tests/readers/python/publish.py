"""A Python app as its authors would write it, for the AWS and Google Cloud backends.

The pod gets the binding twice, as the README shows: `envFrom` of the binding Secret (the SDK
configures itself from the environment variables it names: region, endpoint, credentials,
project, emulator) and the binding files under $SERVICE_BINDING_ROOT, read with
pyservicebinding for the broker-side names. One message is published to the topic the binding
names, and the call returns once the broker has accepted it.

Usage: python publish.py aws-sqs|google-pubsub LOGICAL_TOPIC PAYLOAD
"""

import os
import sys

from pyservicebinding import binding


def sqs(b, topic, payload):
    import boto3

    # A topic with subscriptions is an SNS topic; CreateTopic on an existing name returns it.
    sns = boto3.client("sns")
    arn = sns.create_topic(Name=topic)["TopicArn"]
    sns.publish(TopicArn=arn, Message=payload)


def pubsub(b, topic, payload):
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    path = publisher.topic_path(os.environ["GOOGLE_CLOUD_PROJECT"], topic)
    publisher.publish(path, payload.encode()).result(timeout=30)


def main():
    kind, logical, payload = sys.argv[1:4]
    found = binding.ServiceBinding().bindings(kind)
    if len(found) != 1:
        sys.exit(f"{kind}: expected one binding of that type, found {len(found)}")
    b = found[0]
    topic = b.get(f"topic.{logical}")
    if not topic:
        sys.exit(f"{kind}: the binding has no topic.{logical}")
    {"aws-sqs": sqs, "google-pubsub": pubsub}[kind](b, topic, payload)
    print(f"{kind}: published to {topic}")


if __name__ == "__main__":
    main()
