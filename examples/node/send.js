// A Node frontend for vigil: validate each payload against the task's JSON
// Schema (schemas/tasks/, from `vigil schema export`) before sending, then
// send it with celery-node to the task's queue. A payload the schema refuses
// is never sent: the frontend learns why at once, not from a dead letter.
//
//   npm install
//   node send.js redis://127.0.0.1:6379/0 [COUNT]
//   node send.js amqp://user:pass@127.0.0.1:5672/vigil [COUNT]
//
// Prints one JSON line: how many messages were sent, and the reasons of the
// one deliberately bad payload it refused.
"use strict";

const fs = require("fs");
const path = require("path");
const { randomUUID } = require("crypto");
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

  // The queue as the third argument: celery-node declares it (durable, no
  // arguments, as vigil and plain Celery do) instead of a queue "celery".
  const client = celery.createClient(brokerUrl, brokerUrl, QUEUE);
  await client.isReady();
  const published = [];
  for (let i = 0; i < count; i++) {
    const kwargs = message(i);
    if (!validateMessage(kwargs)) {
      throw new Error(`payload ${i} refused: ${JSON.stringify(validateMessage.errors)}`);
    }
    // What task.applyAsync() sends, published here so that each publish can be
    // awaited: applyAsync keeps its promise to itself, and disconnecting
    // before it settles drops the message (on RabbitMQ the channel closes
    // while the queue's declaration is still on its way).
    const { headers, properties, body } = client.createTaskMessage(randomUUID(), TASK, [], kwargs);
    published.push(client.broker.publish(body, "", QUEUE, headers, properties));
  }
  await Promise.all(published);
  await client.disconnect();
  const sent = published.length;
  console.log(JSON.stringify({ sent, refused }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
