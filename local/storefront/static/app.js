// The storefront page: every call goes to the storefront's JSON API, which asks the gateway.
"use strict";

const $ = (id) => document.getElementById(id);
let clicks = 0;

function user() {
  return $("user").value.trim();
}

function showError(err) {
  const box = $("error");
  box.textContent = `${err.error || "ERROR"}: ${err.message || "the request failed"}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function api(url, options = {}) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (e) {
    throw { error: "UNAVAILABLE", message: `the storefront cannot be reached (${e.message})` };
  }
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw { error: `HTTP ${response.status}`, message: "the storefront answered something that is not JSON" };
  }
  if (!response.ok) throw body;
  return body;
}

function describe(meta, reply) {
  // Built from text nodes: nothing the gateway returns is parsed as HTML.
  meta.replaceChildren();
  const add = (label, value, className) => {
    if (meta.childNodes.length) meta.append(" · ");
    const span = document.createElement("span");
    if (className) span.className = className;
    span.append(`${label} `);
    const b = document.createElement("b");
    b.textContent = value;
    span.append(b);
    meta.append(span);
  };
  if (reply.experiment) {
    add("experiment", reply.experiment);
    add("arm", reply.arm);
  }
  add("policy", reply.policy);
  add("model version", reply.model_version);
  if (reply.degraded) add("fallback:", reply.degraded, "degraded");
}

function render(gridId, metaId, reply) {
  const grid = $(gridId);
  grid.replaceChildren();
  describe($(metaId), reply);
  if (!reply.items.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No items.";
    grid.append(p);
  }
  for (const item of reply.items) {
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.id = item.id;
    tile.title = `${item.name} (${item.subcategory}, ${item.vendor})`;
    // An item added online without a picture this shop serves: a blank tile, not a broken one.
    const img = document.createElement(item.image ? "img" : "div");
    if (item.image) {
      img.src = item.image;
      img.alt = item.name;
    } else {
      img.className = "no-image";
    }
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.name;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = item.score.toFixed(3);
    tile.append(img, name, score);
    tile.addEventListener("click", () => clickItem(item, reply.request_id));
    grid.append(tile);
  }
}

async function loadRecommendations() {
  clearError();
  localStorage.setItem("visrec-user", user());
  try {
    const reply = await api(`/api/recommend?user=${encodeURIComponent(user())}&k=12&exclude_seen=1`);
    render("recs", "recs-meta", reply);
  } catch (e) {
    showError(e);
  }
}

async function clickItem(item, requestId) {
  clearError();
  try {
    await api("/api/click", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: user(), item: item.id, request_id: `${requestId}:${item.id}` }),
    });
    clicks += 1;
    $("clicks").textContent = String(clicks);
    const similar = await api(`/api/similar?item=${encodeURIComponent(item.id)}&k=8`);
    $("similar-to").textContent = item.name;
    $("similar-section").hidden = false;
    render("similar", "similar-meta", similar);
    await $("product-form").addEventListener("submit", (event) => {
  event.preventDefault();
  addProduct();
});
loadRecommendations();
  } catch (e) {
    showError(e);
  }
}

async function search(file) {
  clearError();
  try {
    const reply = await api("/api/search?k=12", { method: "POST", body: file });
    render("search", "search-meta", reply);
  } catch (e) {
    showError(e);
  }
}

async function addProduct() {
  // UpsertItems, then SearchByImage with the same photo: the new product should come first.
  clearError();
  const file = $("product-photo").files[0];
  if (!file) return;
  const query = new URLSearchParams({ name: $("product-name").value, category: $("product-category").value });
  try {
    const added = await api(`/api/products?${query}`, { method: "POST", body: file });
    const reply = await api("/api/search?k=6", { method: "POST", body: file });
    render("product", "product-meta", reply);
    $("product-meta").prepend(`added ${added.id} · `);
    $("product").dataset.added = added.id;
  } catch (e) {
    showError(e);
  }
}

$("user").value = new URLSearchParams(location.search).get("user")
  || localStorage.getItem("visrec-user") || `shopper-${Math.random().toString(16).slice(2, 8)}`;
$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  $("product-form").addEventListener("submit", (event) => {
  event.preventDefault();
  addProduct();
});
loadRecommendations();
});
$("upload").addEventListener("change", (event) => {
  if (event.target.files.length) search(event.target.files[0]);
});
$("product-form").addEventListener("submit", (event) => {
  event.preventDefault();
  addProduct();
});
loadRecommendations();
