// stepflow end-to-end test app on the official Inngest JS SDK v4 (pinned in package.json), served with
// inngest/express. Configuration comes from the environment, as in any Inngest app: PORT, APP_ID, INNGEST_DEV,
// INNGEST_BASE_URL, INNGEST_SIGNING_KEY, INNGEST_EVENT_KEY, ...
import express from "express";
import { Inngest, NonRetriableError, RetryAfterError, referenceFunction } from "inngest";
import { serve } from "inngest/express";
import { buildFunctions, startServer } from "../js_common/functions.js";

const label = "js_v4";
const client = new Inngest({ id: process.env.APP_ID || "e2e-js-v4" });

// v4: the triggers moved into the options: createFunction({ id, triggers, ... }, handler)
const createFunction = (options, trigger, handler) =>
  client.createFunction({ ...options, triggers: [trigger] }, handler);

const functions = buildFunctions({
  inngest: client, createFunction, NonRetriableError, RetryAfterError, referenceFunction, label,
});
startServer({ express, serve, Inngest, client, functions, label });
