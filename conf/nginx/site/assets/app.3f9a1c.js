// Sample SPA bundle. The hash in the file name changes with the content, so the edge can cache it forever.
// Client-side routing: the edge answers every non-file path with index.html, and this script reads the path.
const route = document.getElementById("route");
route.textContent = window.location.pathname;

// Same-origin API call (connect-src 'self'), through the edge's /healthz.
const health = document.getElementById("health");
fetch("/healthz")
  .then((response) => response.json())
  .then((body) => {
    health.textContent = body.status;
  })
  .catch(() => {
    health.textContent = "unreachable";
  });
