// An app that talks pub/sub to its sidecar with the Dapr JavaScript SDK over HTTP, as its authors
// would write it. The sidecar is 127.0.0.1:$DAPR_HTTP_PORT; the subscriber listens on $APP_PORT.
//
// Usage:
//   node app.js subscribe --pubsub P --topic T [--subscription S] [--route /path]
//                         [--answer success|retry-first|drop|slow:MS] [--dead-letter-topic DLT]
//   node app.js publish --pubsub P --topic T (--count N | --stream) [--from SEQ] [--run R]
//                       [--bulk] [--key K] [--data-answer SUCCESS|RETRY|DROP]
//                       [--interval MS] [--retry]
//
// Messages are {"run":R,"seq":i} (plus "answer" with --data-answer: the subscriber answers a
// message carrying one with it, whatever its --answer). --stream publishes until stdin closes;
// --retry publishes a refused message again after --interval instead of failing.
//
// stdout carries one JSON object per line and nothing else (the SDK's own log goes to stderr):
//   subscribe  {"event":"ready"} once the server is up and the sidecar answered, then per delivery
//              {"event":"received","id":...,"data":...,"inFlight":N,"answer":"SUCCESS|RETRY|DROP"}
//   publish    {"event":"published","seq":i} per message, then {"event":"done"};
//              on failure {"event":"error",...} and exit code 1
'use strict';

const {
  CommunicationProtocolEnum,
  DaprClient,
  DaprPubSubStatusEnum,
  DaprServer,
  LogLevel,
} = require('@dapr/dapr');

const HOST = '127.0.0.1';
const HTTP = CommunicationProtocolEnum.HTTP;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(message, extra = {}) {
  out({ event: 'error', message: String(message), ...extra });
  process.exit(1);
}

function parseArgs(argv) {
  const flags = new Set(['bulk', 'stream', 'retry']);
  const args = {};
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)$/.exec(argv[i]);
    if (!m) fail(`unexpected argument ${argv[i]}`);
    if (flags.has(m[1])) args[m[1]] = true;
    else if (i + 1 < argv.length) args[m[1]] = argv[++i];
    else fail(`--${m[1]} needs a value`);
  }
  for (const required of ['pubsub', 'topic']) {
    if (!args[required]) fail(`--${required} is required`);
  }
  return args;
}

function env(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

// The SDK logs through console.info, i.e. to stdout; keep stdout for the JSON lines.
// DAPR_SDK_LOG_LEVEL=Error|Warn|Info|Verbose|Debug (default Warn).
const level = LogLevel[process.env.DAPR_SDK_LOG_LEVEL];
const logger = {
  level: typeof level === 'number' ? level : LogLevel.Warn,
  service: {
    error: (...a) => console.error('ERROR', ...a),
    warn: (...a) => console.error('WARN', ...a),
    info: (...a) => console.error('INFO', ...a),
    verbose: (...a) => console.error('VERBOSE', ...a),
    debug: (...a) => console.error('DEBUG', ...a),
  },
};

const clientOptions = () => ({
  daprHost: HOST,
  daprPort: env('DAPR_HTTP_PORT'),
  communicationProtocol: HTTP,
  logger,
});

async function subscribe(args) {
  const answer = args.answer || 'success';
  const slow = /^slow:(\d+)$/.exec(answer);
  if (!slow && !['success', 'retry-first', 'drop'].includes(answer)) fail(`unknown --answer ${answer}`);

  const server = new DaprServer({
    serverHost: HOST,
    serverPort: env('APP_PORT'),
    communicationProtocol: HTTP,
    clientOptions: clientOptions(),
    logger,
  });

  // The SDK hands a handler only (data, headers): data is the CloudEvent's `data` and headers are
  // the HTTP request's. The CloudEvent id is in the body alone, so a middleware, registered after
  // the SDK's body parsers and before the subscription routes, keeps each parsed body by the
  // request's headers object, which is the very object the handler is given.
  const cloudEvents = new WeakMap();
  server.daprServer.getServer().use((req, _res, next) => {
    if (req.body && typeof req.body === 'object' && !Buffer.isBuffer(req.body)) {
      cloudEvents.set(req.headers, req.body);
    }
    next();
  });

  const seen = new Set();
  let inFlight = 0;
  const handler = async (data, headers) => {
    const id = cloudEvents.get(headers)?.id ?? null;
    inFlight++;
    try {
      let status = DaprPubSubStatusEnum.SUCCESS;
      if (answer === 'drop') status = DaprPubSubStatusEnum.DROP;
      if (answer === 'retry-first' && !seen.has(id)) status = DaprPubSubStatusEnum.RETRY;
      if (data && typeof data.answer === 'string') status = data.answer;
      seen.add(id);
      out({ event: 'received', id, data, inFlight, answer: status });
      if (slow) await new Promise((resolve) => setTimeout(resolve, Number(slow[1])));
      return status;
    } finally {
      inFlight--;
    }
  };

  const metadata = args.subscription ? { subscription: args.subscription } : undefined;
  if (args['dead-letter-topic']) {
    // subscribe() has no dead-letter parameter; subscribeWithOptions() registers the same way.
    await server.pubsub.subscribeWithOptions(args.pubsub, args.topic, {
      route: args.route,
      metadata,
      deadLetterTopic: args['dead-letter-topic'],
      callback: handler,
    });
  } else {
    await server.pubsub.subscribe(args.pubsub, args.topic, handler, args.route, metadata);
  }

  const stop = () => server.stop().finally(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);

  await server.start();
  out({ event: 'ready' });
}

async function publish(args) {
  const count = args.stream ? Infinity : Number(args.count);
  if (!args.stream && (!Number.isInteger(count) || count < 0)) fail('--count must be a whole number');
  const from = Number(args.from ?? 0);
  const interval = Number(args.interval ?? 0);
  const run = args.run ?? null;
  const metadata = args.key !== undefined ? { partitionKey: args.key } : undefined;
  const message = (seq) =>
    args['data-answer'] ? { run, seq, answer: args['data-answer'] } : { run, seq };
  const pause = () => new Promise((resolve) => setTimeout(resolve, interval));

  let open = true;
  if (args.stream) {
    process.stdin.on('end', () => (open = false));
    process.stdin.on('close', () => (open = false));
    process.stdin.resume();
  }

  const client = new DaprClient(clientOptions());
  await client.start();

  if (args.bulk) {
    const messages = Array.from({ length: count }, (_, i) => message(from + i));
    // publishBulk resolves with the entries it knows failed rather than throwing.
    const res = await client.pubsub.publishBulk(args.pubsub, args.topic, messages, metadata);
    const failed = new Set(res.failedMessages.map((f) => f.message.event.seq));
    for (const m of messages) if (!failed.has(m.seq)) out({ event: 'published', seq: m.seq });
    if (failed.size > 0) {
      const first = res.failedMessages[0].error;
      fail(first?.message ?? first, { failed: [...failed].sort((a, b) => a - b) });
    }
  } else {
    for (let i = 0; i < count && open; i++) {
      const m = message(from + i);
      for (;;) {
        // publish resolves with {error} on failure rather than throwing.
        const res = await client.pubsub.publish(args.pubsub, args.topic, m, { metadata });
        if (!res.error) break;
        if (!args.retry) fail(res.error.message ?? res.error, { seq: m.seq });
        out({ event: 'refused', seq: m.seq, message: String(res.error.message ?? res.error) });
        await pause();
      }
      out({ event: 'published', seq: m.seq });
      if (interval > 0) await pause();
    }
  }
  out({ event: 'done' });
  await client.stop();
}

const [command, ...rest] = process.argv.slice(2);
const commands = { subscribe, publish };
if (!commands[command]) fail('usage: node app.js subscribe|publish --pubsub P --topic T ...');
commands[command](parseArgs(rest)).catch((e) => fail(e?.message ?? e));
