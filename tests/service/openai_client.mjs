// The official OpenAI client (npm "openai", installed by the Makefile under build/npm) against
// a live fluxcgi: node openai_client.mjs NPM_DIR BASE_URL.  Prints one JSON object of what it
// saw; tests/service/test_clients.py checks it.  No retries: a failure must show.
import { createRequire } from "node:module";
import path from "node:path";

const [npmDir, base] = process.argv.slice(2);
const require = createRequire(path.join(npmDir, "package.json"));
const { default: OpenAI } = await import(require.resolve("openai"));

const client = new OpenAI({ apiKey: "unused", baseURL: base + "/v1", maxRetries: 0, timeout: 120000 });
const out = {};

// two images, base64, with FLUX's own fields as extensions
const a = await client.images.generate({
  prompt: "a lighthouse at dusk", n: 2, size: "64x64", response_format: "b64_json",
  seed: 21, num_inference_steps: 1, guidance_scale: 3.5, user: "test",
});
out.b64 = a.data.map((d) => Buffer.from(d.b64_json, "base64").subarray(0, 8).toString("hex"));
out.b64_len = a.data.map((d) => Buffer.from(d.b64_json, "base64").length);
out.created = a.created;
out.size = a.size;

// a URL to the result, a JPEG
const b = await client.images.generate({
  prompt: "a lighthouse", size: "64x64", response_format: "url", output_format: "jpeg",
  output_compression: 80, num_inference_steps: 1,
});
out.url = b.data[0].url;
out.output_format = b.output_format;

// an error in OpenAI's shape, as the client reads it
try {
  await client.images.generate({ prompt: "x", size: "65x64" });
  out.error = null;
} catch (e) {
  out.error = { status: e.status, param: e.param, code: e.code, type: e.type, message: e.message };
}
try {
  await client.images.generate({ prompt: "x", n: 11 });
  out.error_n = null;
} catch (e) {
  out.error_n = { status: e.status, param: e.param };
}
const models = await client.models.list();
out.models = models.data.map((m) => m.id);
console.log(JSON.stringify(out));
