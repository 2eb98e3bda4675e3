// A Node frontend for vigil: validate each payload against the task's JSON
// Schema (schemas/tasks/, from `vigil schema export`) before sending, then
// send it with celery-node to the task's queue. A payload the schema refuses
// is never sent: the frontend learns why at once, not from a dead letter.
//
//   npm install
//   node send.js redis://127.0.0.1:6379/0 [COUNT]
//
// Prints one JSON line: how many messages were sent, and the reasons of the
// one deliberately bad payload it refused.
"use strict";

const fs = require("fs");
const path = require("path");
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");
const celery = require("celery-node");

const SCHEMAS = process.env.VIGIL_SCHEMAS || path.join(__dirname, "..", "..", "schemas", "tasks");
const TASK = "vigil.ingest.message";
const QUEUE = "ingest"; // README, "Task contract": the queue of each task

function validatorFor(taskName) {
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  addFormats(ajv);
  const schema = JSON.parse(fs.readFileSync(path.join(SCHEMAS, `${taskName}.json`), "utf8"));
  return ajv.compile(schema);
}

function message(i) {
  return {
    message_id: `node-${process.pid}-${i}`,
    platform: "discord",
    guild_id: "998877",
    channel_id: "5544",
    user_id: `node-user-${i % 3}`,
    text: "anyone up for ranked tonight?",
    sent_at: new Date().toISOString(),
  };
}

async function main() {
  const brokerUrl = process.argv[2] || "redis://127.0.0.1:6379/0";
  const count = Number(process.argv[3] || 10);
  const validateMessage = validatorFor(TASK);

  const bad = { ...message(0), user_id: "abl:*", sent_at: "2026-11-22T10:00:00" };
  const refused = validateMessage(bad)
    ? []
    : validateMessage.errors.map((e) => `${e.instancePath} ${e.message}`);

  const client = celery.createClient(brokerUrl, brokerUrl);
  client.conf.CELERY_QUEUE = QUEUE;
  await client.isReady();
  const task = client.createTask(TASK);
  let sent = 0;
  for (let i = 0; i < count; i++) {
    const kwargs = message(i);
    if (!validateMessage(kwargs)) {
      throw new Error(`payload ${i} refused: ${JSON.stringify(validateMessage.errors)}`);
    }
    task.applyAsync([], kwargs);
    sent++;
  }
  // celery-node publishes once the broker is ready (a promise it keeps to
  // itself): let those run before the connection's QUIT is queued behind them.
  await new Promise((resolve) => setImmediate(resolve));
  await client.disconnect();
  console.log(JSON.stringify({ sent, refused }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
