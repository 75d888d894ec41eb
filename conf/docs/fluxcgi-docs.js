// Starts Swagger UI on the service's own document (same site, so no CORS and no outside
// request); validatorUrl null: Swagger UI would otherwise load a badge from swagger.io.
window.onload = function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
};
