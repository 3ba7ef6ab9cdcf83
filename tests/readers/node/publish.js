// A Node app as its authors would write it: kube-service-bindings reads the binding projected
// under $SERVICE_BINDING_ROOT, the real client is built from what it returns with no glue, and
// one message is published to the topic the binding names.
//
// Usage: node publish.js CLIENT LOGICAL_TOPIC PAYLOAD
//   CLIENT: kafkajs | ioredis | redis | rhea
// Exits 0 once the broker has accepted the message; prints the reader's keys (never values).
'use strict';

const { getBinding } = require('kube-service-bindings');

const [client, logicalTopic, payload] = process.argv.slice(2);
if (!client || !logicalTopic || !payload) {
  console.error('usage: node publish.js CLIENT LOGICAL_TOPIC PAYLOAD');
  process.exit(2);
}

const TYPES = { kafkajs: 'KAFKA', ioredis: 'REDIS', redis: 'REDIS', rhea: 'AMQP' };

function topicOf(binding) {
  const name = binding[`topic.${logicalTopic}`];
  if (!name) throw new Error(`the binding has no topic.${logicalTopic}`);
  return name;
}

async function kafkajs(binding) {
  const { Kafka, logLevel } = require('kafkajs');
  const kafka = new Kafka({ ...binding, logLevel: logLevel.ERROR });
  const producer = kafka.producer();
  await producer.connect();
  try {
    await producer.send({ topic: topicOf(binding), acks: -1, messages: [{ value: payload }] });
  } finally {
    await producer.disconnect();
  }
}

async function ioredis(binding) {
  const Redis = require('ioredis');
  const redis = new Redis({ ...binding, lazyConnect: true, maxRetriesPerRequest: 1 });
  await redis.connect();
  try {
    await redis.xadd(topicOf(binding), '*', 'data', payload);
  } finally {
    redis.disconnect();
  }
}

async function nodeRedis(binding) {
  const { createClient } = require('redis');
  const redis = createClient(binding);
  redis.on('error', () => {});
  await redis.connect();
  try {
    await redis.xAdd(topicOf(binding), '*', { data: payload });
  } finally {
    await redis.quit();
  }
}

function rhea(binding) {
  const container = require('rhea').create_container();
  return new Promise((resolve, reject) => {
    const connection = container.connect({ ...binding, reconnect: false });
    // RabbitMQ's AMQP 1.0 address of an exchange; the topic exchange delivers every key.
    const sender = connection.open_sender(`/exchange/${topicOf(binding)}/any`);
    sender.once('sendable', () => {
      sender.send({ body: payload });
    });
    sender.once('accepted', () => {
      connection.close();
      resolve();
    });
    for (const event of ['rejected', 'released', 'sender_error', 'connection_error', 'disconnected']) {
      connection.once(event, (ctx) => {
        reject(new Error(`${event}: ${ctx && ctx.error ? ctx.error.message || ctx.error : ''}`));
      });
      sender.once(event, (ctx) => {
        reject(new Error(`${event}: ${ctx && ctx.error ? ctx.error.message || ctx.error : ''}`));
      });
    }
  });
}

const PUBLISH = { kafkajs, ioredis, redis: nodeRedis, rhea };

async function main() {
  if (!PUBLISH[client]) throw new Error(`unknown client ${client}`);
  const binding = getBinding(TYPES[client], client);
  console.log(`${client}: reader returned keys ${Object.keys(binding).sort().join(',')}`);
  await PUBLISH[client](binding);
  console.log(`${client}: published to ${topicOf(binding)}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`${client}: ${err && err.stack ? err.stack : err}`);
    process.exit(1);
  }
);
