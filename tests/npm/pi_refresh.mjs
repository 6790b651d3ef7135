// Refresh the openai-codex credential the way the pi agent does: under proper-lockfile's lock
// (a directory auth.json.lock), with the real pi-ai refresh code, then write the file back.
// Usage: node pi_refresh.mjs <node_modules dir> <auth.json> <issuer base URL>
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modulesDir, authPath, issuer] = process.argv.slice(2);
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) =>
  realFetch(String(input instanceof Request ? input.url : input).replace("https://auth.openai.com", issuer), init);
const { getOAuthProvider } = await import(
  pathToFileURL(`${modulesDir}/@mariozechner/pi-ai/dist/oauth.js`).href
);
const lock = `${authPath}.lock`;
const deadline = Date.now() + 20000;
for (;;) {
  try { mkdirSync(lock); break; } catch (err) {
    if (err.code !== "EEXIST" || Date.now() > deadline) throw err;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
try {
  const auth = JSON.parse(readFileSync(authPath, "utf8"));
  const fresh = await getOAuthProvider("openai-codex").refreshToken(auth["openai-codex"]);
  auth["openai-codex"] = { type: "oauth", ...fresh };
  writeFileSync(authPath, JSON.stringify(auth, null, 2));
  console.log(fresh.refresh);
} finally {
  rmdirSync(lock);
}
