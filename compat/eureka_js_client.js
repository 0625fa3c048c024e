#!/usr/bin/env node
// Drives the real eureka-js-client (4.5.0, npm) against an rtalpha registry.
//
// Run by crates/rtalpha/tests/eureka_clients.rs with NODE_PATH set to the node_modules
// that compat/setup.sh installs; it can also be run by hand against any registry:
//
//     NODE_PATH=.compat/node/node_modules node compat/eureka_js_client.js http://127.0.0.1:8761
//
// App B must already be registered (the test does it over plain HTTP). The script, using
// only the client's own API for every Eureka call:
//
// 1. registers app A (heartbeat and registry fetch every second; the client fails its
//    start unless the POST is answered exactly 204) and prints `REGISTERED <APP> <ID>`;
//    with --handshake it then waits for one line on stdin, so that the caller can look
//    at the registry while A is registered;
// 2. finds app B with getInstancesByAppId (full fetch, JSON) with the expected id, host
//    and port, and also by its VIP address;
// 3. checks that heartbeats arrive: the client reports them answered 200 and the
//    registry's leaseInfo.lastRenewalTimestamp for A advances;
// 4. stops the client (DELETE, which the client needs answered exactly 200) and checks
//    that A is gone; prints `DEREGISTERED <APP> <ID>` and `OK`.
//
// Any failure exits 1 with `js-client: FAILED: ...` and the HTTP exchanges so far on
// stderr. Progress and the client's own logs go to stderr, the protocol lines to stdout.
// The client has no API for status overrides, so this script does not exercise them.

'use strict';

const http = require('http');
const readline = require('readline');
// The HTTP library eureka-js-client makes every call with; wrapped below to record the
// exchanges (the client looks its methods up at call time).
const request = require('request');
const { Eureka } = require('eureka-js-client');

const APP_A = 'appa';

function log(message) {
  process.stderr.write(`js-client: ${message}\n`);
}

class Failure extends Error {}

// -- recording the client's HTTP exchanges ------------------------------------------
const exchanges = [];
for (const method of ['get', 'post', 'put', 'delete']) {
  const original = request[method];
  request[method] = function recorded(opts, callback) {
    const url = `${opts.baseUrl || ''}${opts.uri || ''}`;
    return original.call(this, opts, (error, response, body) => {
      exchanges.push({
        method: method.toUpperCase(),
        url,
        status: response ? response.statusCode : null,
        error: error ? String(error) : '',
        body: response && response.statusCode >= 300 ? String(body).slice(0, 300) : '',
      });
      callback(error, response, body);
    });
  };
}

function dumpExchanges() {
  exchanges.forEach((e, i) => {
    const extra = e.error || e.body ? `  ${e.error}${e.body}` : '';
    process.stderr.write(`  #${i} ${e.method} ${e.url} -> ${e.status}${extra}\n`);
  });
}

// -- helpers ------------------------------------------------------------------------
function parseArgs(argv) {
  const args = {
    registry: null,
    port: 9101,
    appB: 'APPB',
    appBId: '127.0.0.1:appb:9002',
    appBHost: '127.0.0.1',
    appBPort: 9002,
    appBVip: 'appb',
    handshake: false,
    timeout: 10,
  };
  const flags = {
    '--port': ['port', Number],
    '--app-b': ['appB', String],
    '--app-b-id': ['appBId', String],
    '--app-b-host': ['appBHost', String],
    '--app-b-port': ['appBPort', Number],
    '--app-b-vip': ['appBVip', String],
    '--timeout': ['timeout', Number],
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--handshake') {
      args.handshake = true;
    } else if (flags[arg]) {
      const [key, convert] = flags[arg];
      i += 1;
      args[key] = convert(argv[i]);
    } else if (!arg.startsWith('--') && args.registry === null) {
      args.registry = arg;
    } else {
      throw new Failure(`unknown argument ${arg}`);
    }
  }
  if (!args.registry) {
    throw new Failure('usage: eureka_js_client.js REGISTRY_URL [--handshake] [--port N] ...');
  }
  return args;
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function waitUntil(what, predicate, timeoutSecs) {
  const deadline = Date.now() + timeoutSecs * 1000;
  for (;;) {
    // eslint-disable-next-line no-await-in-loop
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) {
      throw new Failure(`timed out after ${timeoutSecs}s waiting for ${what}`);
    }
    // eslint-disable-next-line no-await-in-loop
    await sleep(100);
  }
}

// A plain GET with Accept: application/json, outside the client, to see what the
// registry holds.
function getJson(url, timeoutSecs) {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: { Accept: 'application/json' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { body += chunk; });
      res.on('end', () => {
        if (res.statusCode !== 200) {
          resolve({ status: res.statusCode, body });
          return;
        }
        try {
          resolve({ status: 200, json: JSON.parse(body) });
        } catch (err) {
          reject(new Failure(`GET ${url} answered 200 with a body that is not JSON: ${body.slice(0, 200)}`));
        }
      });
    });
    req.setTimeout(timeoutSecs * 1000, () => req.destroy(new Error('timed out')));
    req.on('error', (err) => reject(new Failure(`GET ${url} failed: ${err.message}`)));
  });
}

function waitForStdinLine(timeoutSecs) {
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: process.stdin });
    const timer = setTimeout(() => {
      lines.close();
      reject(new Failure(`no go-ahead on stdin within ${timeoutSecs}s`));
    }, timeoutSecs * 1000);
    let got = false;
    lines.once('line', () => {
      got = true; // before close(), which emits 'close' at once
      clearTimeout(timer);
      resolve();
      lines.close();
      process.stdin.pause();
    });
    lines.once('close', () => {
      clearTimeout(timer);
      if (!got) reject(new Failure('stdin closed before the go-ahead'));
    });
  });
}

function once(emitter, event, timeoutSecs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, onEvent);
      reject(new Failure(`timed out after ${timeoutSecs}s waiting for the client's '${event}' event`));
    }, timeoutSecs * 1000);
    function onEvent(...values) {
      clearTimeout(timer);
      resolve(values);
    }
    emitter.once(event, onEvent);
  });
}

function expectExchange(since, method, pathEnd, status) {
  const found = exchanges.slice(since).find(
    (e) => e.method === method && e.url.split('?')[0].endsWith(pathEnd),
  );
  if (!found) throw new Failure(`the client sent no ${method} ...${pathEnd}`);
  if (found.status !== status) {
    throw new Failure(`${method} ...${pathEnd} was answered ${found.status}, expected ${status}`);
  }
}

// The client's own logs, to stderr (its default logger writes info to stdout).
const stderrLogger = {
  levelValue: 40,
  level() { return this.levelValue; },
  write(tag, args) {
    process.stderr.write(`eureka-js-client: ${tag} ${args.map((a) => (a instanceof Error ? a.stack : typeof a === 'string' ? a : JSON.stringify(a))).join(' ')}\n`);
  },
  error(...args) { this.write('ERROR', args); },
  warn(...args) { this.write('WARN', args); },
  info(...args) { if (this.levelValue <= 30) this.write('INFO', args); },
  debug(...args) { if (this.levelValue <= 20) this.write('DEBUG', args); },
};

// -- the run ------------------------------------------------------------------------
async function run(args) {
  const base = new URL(args.registry);
  const app = APP_A.toUpperCase();
  const instanceId = `127.0.0.1:${APP_A}:${args.port}`;
  const instanceUrl = `${base.origin}/eureka/apps/${app}/${instanceId}`;
  const client = new Eureka({
    logger: stderrLogger,
    cwd: __dirname, // no eureka-client.yml here: the config below is the whole config
    instance: {
      app: APP_A, // sent as is: POST /eureka/apps/appa
      instanceId,
      hostName: '127.0.0.1',
      ipAddr: '127.0.0.1',
      port: { $: args.port, '@enabled': 'true' },
      vipAddress: APP_A,
      statusPageUrl: `http://127.0.0.1:${args.port}/info`,
      metadata: { 'compat-client': 'eureka-js-client' },
      dataCenterInfo: {
        '@class': 'com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo',
        name: 'MyOwn',
      },
    },
    eureka: {
      host: base.hostname,
      port: Number(base.port),
      servicePath: '/eureka/apps/',
      heartbeatInterval: 1000,
      registryFetchInterval: 1000,
      maxRetries: 0,
    },
  });
  let heartbeats = 0;
  client.on('heartbeat', () => { heartbeats += 1; });

  // 1. register
  log(`registering ${app} at ${base.origin}/eureka/apps/`);
  let mark = exchanges.length;
  await new Promise((resolve, reject) => {
    client.start((err) => (err ? reject(new Failure(`start() failed: ${err.message || err}`)) : resolve()));
  });
  expectExchange(mark, 'POST', `apps/${APP_A}`, 204);
  expectExchange(mark, 'GET', 'apps/', 200);
  const registered = await getJson(instanceUrl, args.timeout);
  if (registered.status !== 200) {
    throw new Failure(`GET ${instanceUrl} answered ${registered.status} after registration: ${registered.body}`);
  }
  if (registered.json.instance.status !== 'UP') {
    throw new Failure(`registered ${app} has status ${registered.json.instance.status}, expected UP`);
  }
  process.stdout.write(`REGISTERED ${app} ${instanceId}\n`);
  if (args.handshake) await waitForStdinLine(args.timeout * 3);

  // 2. discover B
  log(`discovering ${args.appB}`);
  let instances = client.getInstancesByAppId(args.appB);
  for (let tries = 0; instances.length === 0 && tries < 3; tries += 1) {
    // eslint-disable-next-line no-await-in-loop
    await once(client, 'registryUpdated', args.timeout);
    instances = client.getInstancesByAppId(args.appB);
  }
  if (instances.length !== 1) {
    throw new Failure(`getInstancesByAppId(${args.appB}) gave ${instances.length} instances, expected 1: ${JSON.stringify(instances)}`);
  }
  const b = instances[0];
  const got = [b.instanceId, b.hostName, b.ipAddr, b.port && b.port.$, b.status];
  const want = [args.appBId, args.appBHost, args.appBHost, args.appBPort, 'UP'];
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Failure(`${args.appB} discovered as (id, host, ip, port, status) ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`);
  }
  const byVip = client.getInstancesByVipAddress(args.appBVip);
  if (byVip.length !== 1 || byVip[0].instanceId !== args.appBId) {
    throw new Failure(`getInstancesByVipAddress(${args.appBVip}) gave ${JSON.stringify(byVip.map((i) => i.instanceId))}`);
  }
  const own = await waitUntil(
    `${app} itself in the client's registry`,
    () => client.getInstancesByAppId(app).find((i) => i.instanceId === instanceId),
    args.timeout,
  );
  if (own.port.$ !== args.port) {
    throw new Failure(`${app} discovered with port ${JSON.stringify(own.port)}`);
  }

  // 3. heartbeats
  log('checking heartbeats');
  const first = await getJson(instanceUrl, args.timeout);
  const lease = first.json.instance.leaseInfo;
  const beatsBefore = heartbeats;
  mark = exchanges.length;
  await waitUntil('two heartbeats answered 200', () => heartbeats >= beatsBefore + 2, args.timeout);
  const renewals = exchanges.slice(mark).filter((e) => e.method === 'PUT');
  const badRenewals = renewals.filter((e) => e.status !== 200);
  if (badRenewals.length > 0) {
    throw new Failure(`heartbeats answered ${JSON.stringify(badRenewals.map((e) => e.status))}`);
  }
  const later = await waitUntil('lastRenewalTimestamp to advance', async () => {
    const now = await getJson(instanceUrl, args.timeout);
    const ts = now.json && now.json.instance.leaseInfo.lastRenewalTimestamp;
    return ts > lease.lastRenewalTimestamp ? ts : null;
  }, args.timeout);
  log(`lastRenewalTimestamp ${lease.lastRenewalTimestamp} -> ${later}`);

  // 4. deregister, right after a heartbeat, so that none is in flight meanwhile
  await once(client, 'heartbeat', args.timeout);
  log('stop()');
  mark = exchanges.length;
  await new Promise((resolve, reject) => {
    client.stop((err) => (err ? reject(new Failure(`stop() failed: ${err.message || err}`)) : resolve()));
  });
  expectExchange(mark, 'DELETE', `apps/${APP_A}/${instanceId}`, 200);
  const gone = await getJson(instanceUrl, args.timeout);
  if (gone.status !== 404) {
    throw new Failure(`GET ${instanceUrl} answered ${gone.status} after stop(), expected 404`);
  }
  process.stdout.write(`DEREGISTERED ${app} ${instanceId}\n`);
}

let parsed;
try {
  parsed = parseArgs(process.argv.slice(2));
} catch (err) {
  log(`FAILED: ${err.message}`);
  process.exit(2);
}
run(parsed).then(
  () => {
    process.stdout.write('OK\n', () => process.exit(0));
  },
  (err) => {
    log(`FAILED: ${err instanceof Failure ? err.message : err.stack}`);
    log('HTTP exchanges:');
    dumpExchanges();
    process.exit(1);
  },
);
