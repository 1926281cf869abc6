// The end-to-end test functions (tests/test_inngest_sdks.py), written once for the Inngest JS SDK v3 and v4.
// Each app (js_v3/app.js, js_v4/app.js) imports its own pinned `inngest` and passes it in, with an adapter
// for the one API difference that matters here: createFunction(options, trigger, handler) in v3,
// createFunction({...options, triggers}, handler) in v4.
//
// Event names are "<app id>/<name>" so several apps can share one server. Every step records its executions
// in memory (counts per "<token>:<step>") so the tests can assert a step ran exactly N times: GET /counts.

export const counts = new Map(); // "<token>:<step>" -> [ms timestamps of each execution]

export function hit(token, step) {
  const key = `${token}:${step}`;
  if (!counts.has(key)) counts.set(key, []);
  counts.get(key).push(Date.now());
  return counts.get(key).length;
}

export function countsFor(token) {
  const out = {};
  for (const [key, times] of counts) {
    if (key.startsWith(`${token}:`)) out[key.slice(token.length + 1)] = { count: times.length, times };
  }
  return out;
}

/**
 * @param sdk  { inngest (the client), createFunction(opts, trigger, handler), NonRetriableError,
 *               RetryAfterError, referenceFunction, label }
 */
export function buildFunctions(sdk) {
  const { inngest, createFunction, NonRetriableError, RetryAfterError, referenceFunction, label } = sdk;
  const app = inngest.id;
  const ev = (name) => `${app}/${name}`;

  // (a) three step.run in sequence
  const threeSteps = createFunction({ id: "three-steps" }, { event: ev("three-steps") },
    async ({ event, step }) => {
      const t = event.data.token;
      const a = await step.run("add-one", () => { hit(t, "add-one"); return event.data.x + 1; });
      const b = await step.run("double", () => { hit(t, "double"); return a * 2; });
      const c = await step.run("add-three", () => { hit(t, "add-three"); return b + 3; });
      return { a, b, c, sdk: label };
    });

  // (b) a durable sleep between two steps
  const sleeper = createFunction({ id: "sleeper" }, { event: ev("sleeper") },
    async ({ event, step }) => {
      const t = event.data.token;
      const before = await step.run("before", () => { hit(t, "before"); return Date.now(); });
      await step.sleep("nap", event.data.duration || "2s");
      const after = await step.run("after", () => { hit(t, "after"); return Date.now(); });
      return { before, after };
    });

  // (c) waitForEvent with an `if` expression
  const waitMatch = createFunction({ id: "wait-match" }, { event: ev("wait-match") },
    async ({ event, step }) => {
      await step.run("ready", () => { hit(event.data.token, "ready"); return true; });
      const approval = await step.waitForEvent("wait-approval", {
        event: ev("approved"),
        timeout: "30s",
        if: "async.data.order == event.data.order",
      });
      return { approval };
    });

  // (d) waitForEvent that times out
  const waitTimeout = createFunction({ id: "wait-timeout" }, { event: ev("wait-timeout") },
    async ({ step }) => {
      const got = await step.waitForEvent("wait-never", { event: ev("never-sent"), timeout: "1s" });
      return { got: got ?? null, timedOut: got === null };
    });

  // (e) invoke another function of the same app
  const invokeChild = createFunction({ id: "invoke-child" }, { event: ev("invoke-child") },
    async ({ event, step }) => {
      const doubled = await step.run("double-it", () => event.data.n * 2);
      return { doubled };
    });
  const invokeParent = createFunction({ id: "invoke-parent" }, { event: ev("invoke-parent") },
    async ({ event, step }) => {
      const child = await step.invoke("call-child", { function: invokeChild, data: { n: event.data.n } });
      return { child };
    });

  // (f) sendEvent whose event triggers another function
  const sendChild = createFunction({ id: "send-child" }, { event: ev("sent-by-parent") },
    async ({ event, step }) => {
      await step.run("got", () => { hit(event.data.token, "send-child"); return true; });
      return { got: event.data.token };
    });
  const sendParent = createFunction({ id: "send-parent" }, { event: ev("send-parent") },
    async ({ event, step }) => {
      const sent = await step.sendEvent("send-it", { name: ev("sent-by-parent"), data: { token: event.data.token } });
      return { ids: sent.ids };
    });

  // (g) parallel steps
  const parallel = createFunction({ id: "parallel" }, { event: ev("parallel") },
    async ({ event, step }) => {
      const t = event.data.token;
      const parts = await Promise.all(["p-a", "p-b", "p-c"].map((id) =>
        step.run(id, () => { hit(t, id); return id.toUpperCase(); })));
      const joined = await step.run("p-join", () => { hit(t, "p-join"); return parts.join("+"); });
      return { parts, joined };
    });

  // (h) a step that always throws, retries: 1 -> 2 attempts, then the run fails
  const alwaysFails = createFunction({ id: "always-fails", retries: 1 }, { event: ev("always-fails") },
    async ({ event, step }) => {
      await step.run("boom", () => {
        const n = hit(event.data.token, "boom");
        throw new Error(`boom: always fails (attempt ${n})`);
      });
      return "unreachable";
    });

  // (i) NonRetriableError -> 1 attempt
  const nonRetriable = createFunction({ id: "non-retriable", retries: 3 }, { event: ev("non-retriable") },
    async ({ event, step }) => {
      await step.run("refuse", () => {
        hit(event.data.token, "refuse");
        throw new NonRetriableError("nope: not retriable");
      });
      return "unreachable";
    });

  // (j) RetryAfterError: retried no earlier than 1 s later, succeeds on the 2nd attempt
  const retryAfter = createFunction({ id: "retry-after", retries: 2 }, { event: ev("retry-after") },
    async ({ event, step }) => {
      const value = await step.run("flaky", () => {
        const n = hit(event.data.token, "flaky");
        if (n === 1) throw new RetryAfterError("not yet: retry later", "1s");
        return `ok on attempt ${n}`;
      });
      return { value };
    });

  // (k) cancelOn: cancelled by an event while it sleeps
  const cancellable = createFunction(
    { id: "cancellable", cancelOn: [{ event: ev("cancel"), if: "async.data.token == event.data.token" }] },
    { event: ev("cancellable") },
    async ({ event, step }) => {
      const t = event.data.token;
      await step.run("started", () => { hit(t, "started"); return true; });
      await step.sleep("long-nap", "60s");
      await step.run("after-nap", () => { hit(t, "after-nap"); return true; });
      return "not cancelled";
    });

  // (l) cron: every 2 seconds (stepflow reads a sixth field as seconds)
  const cronFn = createFunction({ id: "cron-tick" }, { cron: process.env.CRON_SCHEDULE || "*/2 * * * * *" },
    async ({ step }) => {
      const at = await step.run("tick", () => { hit("cron", "tick"); return Date.now(); });
      return { tick: at };
    });

  // cross-SDK: invoke a function of a stepflow-SDK app (function id "<app>-<fn>": sf-cross-double)
  const crossInvoke = createFunction({ id: "cross-invoke-stepflow" }, { event: ev("cross-invoke") },
    async ({ event, step }) => {
      const result = await step.invoke("call-stepflow", {
        function: referenceFunction({ appId: "sf-cross", functionId: "double" }),
        data: { n: event.data.n },
      });
      return { via: label, result };
    });

  // (m) onFailure: retries 0, the function throws; the handler (registered as "<app>-fails-notify-failure",
  // triggered by inngest/function.failed) reports what the failure event told it
  const failsNotify = createFunction({
    id: "fails-notify",
    retries: 0,
    onFailure: async ({ error, event }) => {
      const original = event.data.event || {};
      const token = (original.data || {}).token ?? "?";
      hit(token, "on-failure");
      return {
        event_name: event.name, function_id: event.data.function_id, run_id: event.data.run_id,
        message: error?.message ?? null, error_name: error?.name ?? null, token, original_event: original.name ?? null,
      };
    },
  }, { event: ev("fails-notify") },
  async ({ event }) => {
    hit(event.data.token, "fails-notify");
    throw new Error(`exploded on purpose: ${event.data.token}`);
  });

  // (o) sleepUntil a time given in the event (ms since the epoch)
  const sleepUntil = createFunction({ id: "sleep-until" }, { event: ev("sleep-until") },
    async ({ event, step }) => {
      await step.sleepUntil("nap-until", new Date(event.data.until));
      const after = await step.run("after", () => { hit(event.data.token, "after"); return Date.now(); });
      return { until: event.data.until, after };
    });

  // (p) a step that throws on its first attempt and succeeds on the second (retries: 1 -> two attempts in all)
  const flakyOnce = createFunction({ id: "flaky-once", retries: 1 }, { event: ev("flaky-once") },
    async ({ event, step }) => {
      const value = await step.run("flaky", () => {
        const n = hit(event.data.token, "flaky");
        if (n === 1) throw new Error("flaky: the first attempt fails");
        return `ok on attempt ${n}`;
      });
      return { value };
    });

  // (q) flow control: one run at a time per token (concurrency keyed by CEL), each step taking 300 ms
  const oneAtATime = createFunction({
    id: "one-at-a-time",
    concurrency: { limit: 1, key: "event.data.token" },
    throttle: { limit: 100, period: "1s" },
  }, { event: ev("one-at-a-time") },
  async ({ event, step }) => {
    const n = await step.run("work", async () => {
      hit(event.data.token, "start");
      await new Promise((resolve) => setTimeout(resolve, 300));
      return hit(event.data.token, "end");
    });
    return { n };
  });

  // (r) batching: three events make one run, which sees them all in `events`
  const batched = createFunction({ id: "batched", batchEvents: { maxSize: 3, timeout: "5s" } },
    { event: ev("batched") },
    async ({ events }) => ({ ns: events.map((e) => e.data.n) }));

  return [threeSteps, sleeper, waitMatch, waitTimeout, invokeChild, invokeParent, sendChild, sendParent,
    parallel, alwaysFails, nonRetriable, retryAfter, cancellable, cronFn, crossInvoke, failsNotify, sleepUntil,
    flakyOnce, oneAtATime, batched];
}

/**
 * Serve the functions with inngest/express at /api/inngest, plus GET /counts?token=T, GET /health and
 * GET /send-test?key=K&name=N: (n) send an event with a client of its own whose event key is K (e.g. a wrong
 * one); answers what the SDK returned or threw.
 */
export function startServer({ express, serve, Inngest, client, functions, label }) {
  const app = express();
  app.use(express.json({ limit: "10mb" }));
  app.use("/api/inngest", serve({ client, functions }));
  app.get("/counts", (req, res) => res.json(countsFor(String(req.query.token))));
  app.get("/send-test", async (req, res) => {
    const sender = new Inngest({ id: client.id, eventKey: String(req.query.key) });
    try {
      const out = await sender.send({ name: String(req.query.name), data: { via: "send-test" } });
      res.json({ ok: true, ids: out.ids });
    } catch (err) {
      res.json({
        ok: false, error_class: err?.constructor?.name ?? typeof err, is_error: err instanceof Error,
        message: String(err?.message ?? err),
      });
    }
  });
  app.get("/health", (_req, res) => res.json({ ok: true, sdk: label }));
  const port = Number(process.env.PORT || 3000);
  app.listen(port, "127.0.0.1", () => {
    console.log(`${label} app ${client.id} listening on http://127.0.0.1:${port}/api/inngest`);
  });
}
