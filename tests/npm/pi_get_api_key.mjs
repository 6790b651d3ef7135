// Ask the real pi-ai library for the openai-codex API key from a pi auth.json, as the pi agent
// does. Usage: node pi_get_api_key.mjs <node_modules dir> <auth.json> <issuer base URL>
// pi-ai's token URL is fixed to https://auth.openai.com; fetch is pointed at the fake issuer.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [modulesDir, authPath, issuer] = process.argv.slice(2);
const realFetch = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = String(input instanceof Request ? input.url : input);
  return realFetch(url.replace("https://auth.openai.com", issuer), init);
};
const oauth = pathToFileURL(`${modulesDir}/@mariozechner/pi-ai/dist/oauth.js`).href;
const { getOAuthApiKey } = await import(oauth);
const credentials = JSON.parse(readFileSync(authPath, "utf8"));
const result = await getOAuthApiKey("openai-codex", credentials);
console.log(JSON.stringify(result));
