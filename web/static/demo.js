// The demo host page. It records every plugin event in window.vigilEvents (the browser tests read
// them) and, on completion, asks its backend (/demo/result) for the FULL result.
import * as VigilLiveness from "/plugin/vigil-web.js";

window.vigilEvents = [];
window.VigilLiveness = VigilLiveness;
const $ = (id) => document.getElementById(id);
const record = (kind) => (value) => window.vigilEvents.push({ kind, value });

async function start() {
  const transactionId = $("transaction").value || crypto.randomUUID();
  $("transaction").value = transactionId;
  $("answer").textContent = "…";
  $("full").textContent = "…";
  await VigilLiveness.open({
    meta: { transaction_id: transactionId },
    gestures: $("gestures").checked,
    lang: $("lang").value,
    on_capture_complete: record("capture_complete"),
    on_result: record("result"),
    on_error: (error) => {
      record("error")(error);
      $("answer").textContent = JSON.stringify(error, null, 2);
    },
    on_complete: async (answer) => {
      record("complete")(answer);
      $("answer").textContent = JSON.stringify(answer, null, 2);
      const found = await fetch(`/demo/result?transaction_id=${encodeURIComponent(transactionId)}`);
      $("full").textContent = JSON.stringify(await found.json(), null, 2);
    },
  });
}

$("start").addEventListener("click", start);
const params = new URLSearchParams(location.search);
if (params.get("transaction_id")) $("transaction").value = params.get("transaction_id");
if (params.get("gestures") === "1") $("gestures").checked = true;
if (params.get("lang")) $("lang").value = params.get("lang");
if (params.get("auto") === "1") start();
