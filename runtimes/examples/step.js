// A step in Node.js, no SDK (docker runtime): node step.js '<Input JSON>'
const fs = require("fs");
const arg = process.argv[2];
const input = JSON.parse(arg.startsWith("@") ? fs.readFileSync(arg.slice(1), "utf8") : arg);
const items = (input.event.data.items || []).length;
if (items === 0) {
  console.log(JSON.stringify({ status: 400, body: { error: "no items" } })); // 4xx: not retried
} else {
  console.log(JSON.stringify({ status: 200, body: { items } }));
}
