/* Draws the usage charts of the admin with Chart.js (vendored: usage/static/usage/vendor/).
 *
 * Each <canvas data-usage-chart="KIND" data-usage-data="ID" [data-usage-part="NAME"]> gets one chart; its data is
 * the JSON of the <script type="application/json" id="ID"> that Django's json_script wrote (or that object's
 * NAME member). KIND is one of the builders below. No network access: everything is on the page.
 */
(function () {
  "use strict";

  function cssVar(name, fallback) {
    var value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  var COLORS = {
    requests: "#417690",
    ok: "#79aec8",
    tokens: "#e08a2c",
    cost: "#2f9e6e",
    errors: "#ba2121",
    throttled: "#e8a33d",
    remaining: "rgba(128, 128, 128, 0.22)"
  };

  // One colour per endpoint series, in the order the server lists endpoints (chat first).
  var SERIES_COLORS = ["#417690", "#e08a2c", "#2f9e6e", "#8e5ea2", "#ba2121", "#79aec8", "#e8a33d"];

  function usd(value) {
    if (!value) return "$0";
    var digits = Math.abs(value) < 0.01 ? 4 : 2;
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function compact(value) {
    return Number(value).toLocaleString("en-US", { notation: "compact", maximumFractionDigits: 1 });
  }

  function percent(value) {
    return value + " %";
  }

  function baseOptions(extra) {
    var options = {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      elements: { line: { cubicInterpolationMode: "monotone" } },
      plugins: {
        legend: {
          position: "bottom",
          // In dataset order (bars first), whatever the drawing order says.
          labels: { boxWidth: 12, boxHeight: 12, sort: function (a, b) { return a.datasetIndex - b.datasetIndex; } }
        }
      },
      scales: {}
    };
    extra = extra || {};
    // One level deeper for plugins, so that a chart's tooltip does not drop the shared legend settings.
    var plugins = Object.assign({}, options.plugins);
    Object.keys(extra.plugins || {}).forEach(function (name) {
      plugins[name] = Object.assign({}, options.plugins[name], extra.plugins[name]);
    });
    return Object.assign(options, extra, { plugins: plugins });
  }

  function timeAxis() {
    return { grid: { display: false }, ticks: { maxRotation: 0, autoSkip: true, maxTicksLimit: 10 } };
  }

  var BUILDERS = {
    // Bars of requests (left axis) with a line of tokens (right axis), per day.
    "requests-tokens": function (d) {
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "Requests", data: d.requests, backgroundColor: COLORS.requests, yAxisID: "y", order: 2 },
            {
              label: "Tokens", data: d.tokens, type: "line", borderColor: COLORS.tokens,
              backgroundColor: COLORS.tokens, yAxisID: "y1", pointRadius: 2, order: 1
            }
          ]
        },
        options: baseOptions({
          scales: {
            x: timeAxis(),
            y: { beginAtZero: true, title: { display: true, text: "requests" }, ticks: { precision: 0 } },
            y1: {
              beginAtZero: true, position: "right", grid: { drawOnChartArea: false },
              title: { display: true, text: "tokens" }, ticks: { callback: compact }
            }
          }
        })
      };
    },

    "cost": function (d) {
      return {
        type: "bar",
        data: { labels: d.labels, datasets: [{ label: "Cost (USD)", data: d.cost, backgroundColor: COLORS.cost }] },
        options: baseOptions({
          plugins: {
            legend: { display: false },
            tooltip: { callbacks: { label: function (c) { return "Cost: " + usd(c.parsed.y); } } }
          },
          scales: { x: timeAxis(), y: { beginAtZero: true, ticks: { callback: usd } } }
        })
      };
    },

    // Spend against the cap as one horizontal bar: spent, then what is left.
    "budget": function (d) {
      var b = d.budget;
      var spent = b.spent;
      var left = Math.max(b.budget - spent, 0);
      var ratio = b.budget ? spent / b.budget : 0;
      var color = ratio >= 1 ? COLORS.errors : ratio >= 0.8 ? COLORS.throttled : COLORS.cost;
      return {
        type: "bar",
        data: {
          labels: ["Budget"],
          datasets: [
            { label: "Spent", data: [spent], backgroundColor: color, stack: "b", borderRadius: 3 },
            { label: "Left", data: [left], backgroundColor: COLORS.remaining, stack: "b", borderRadius: 3 }
          ]
        },
        options: baseOptions({
          indexAxis: "y",
          interaction: { mode: "nearest", intersect: true },
          plugins: {
            legend: { display: false },
            tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + usd(c.parsed.x); } } }
          },
          scales: {
            x: { stacked: true, beginAtZero: true, max: Math.max(b.budget, spent), ticks: { callback: usd } },
            y: { stacked: true, display: false }
          }
        })
      };
    },

    // Stacked bars: successful requests, errors (other than 429) and throttled (429) requests.
    "requests-by-outcome": function (d) {
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "OK", data: d.ok, backgroundColor: COLORS.ok, stack: "r" },
            { label: "Errors", data: d.errors, backgroundColor: COLORS.errors, stack: "r" },
            { label: "Throttled (429)", data: d.throttled, backgroundColor: COLORS.throttled, stack: "r" }
          ]
        },
        options: baseOptions({
          scales: {
            x: Object.assign(timeAxis(), { stacked: true }),
            y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }
          }
        })
      };
    },

    "cost-tokens": function (d) {
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [
            { label: "Cost (USD)", data: d.cost, backgroundColor: COLORS.cost, yAxisID: "y", order: 2 },
            {
              label: "Tokens", data: d.tokens, type: "line", borderColor: COLORS.tokens,
              backgroundColor: COLORS.tokens, yAxisID: "y1", pointRadius: 2, order: 1
            }
          ]
        },
        options: baseOptions({
          plugins: {
            tooltip: {
              callbacks: {
                label: function (c) {
                  return c.dataset.yAxisID === "y" ? "Cost: " + usd(c.parsed.y) : "Tokens: " + compact(c.parsed.y);
                }
              }
            }
          },
          scales: {
            x: timeAxis(),
            y: { beginAtZero: true, ticks: { callback: usd } },
            y1: {
              beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, ticks: { callback: compact }
            }
          }
        })
      };
    },

    // Shares of requests that failed (status >= 400) and that were throttled (429), in percent.
    "rates": function (d) {
      return {
        type: "line",
        data: {
          labels: d.labels,
          datasets: [
            {
              label: "Error rate", data: d.error_rate, borderColor: COLORS.errors, backgroundColor: COLORS.errors,
              pointRadius: 2
            },
            {
              label: "Throttle rate (429)", data: d.throttle_rate, borderColor: COLORS.throttled,
              backgroundColor: COLORS.throttled, pointRadius: 2
            }
          ]
        },
        options: baseOptions({
          plugins: {
            tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + percent(c.parsed.y); } } }
          },
          scales: {
            x: timeAxis(),
            y: { beginAtZero: true, suggestedMax: 10, ticks: { callback: percent } }
          }
        })
      };
    },

    // Stacked bars of requests per day, one series per endpoint ({labels, series: [{name, requests, ...}]}).
    "endpoints": function (d) {
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: d.series.map(function (s, i) {
            return {
              label: s.name, data: s.requests, backgroundColor: SERIES_COLORS[i % SERIES_COLORS.length], stack: "e"
            };
          })
        },
        options: baseOptions({
          scales: {
            x: Object.assign(timeAxis(), { stacked: true }),
            y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } }
          }
        })
      };
    },

    // Top keys or models: by cost when prices are known, by requests otherwise.
    "top": function (d) {
      var byCost = d.cost.some(function (v) { return v > 0; });
      return {
        type: "bar",
        data: {
          labels: d.labels,
          datasets: [{
            label: byCost ? "Cost (USD)" : "Requests",
            data: byCost ? d.cost : d.requests,
            backgroundColor: byCost ? COLORS.cost : COLORS.requests,
            borderRadius: 3,
            maxBarThickness: 34
          }]
        },
        options: baseOptions({
          indexAxis: "y",
          plugins: {
            legend: { display: false },
            tooltip: {
              callbacks: {
                label: function (c) { return byCost ? "Cost: " + usd(c.parsed.x) : "Requests: " + c.parsed.x; }
              }
            }
          },
          scales: {
            x: { beginAtZero: true, ticks: byCost ? { callback: usd } : { precision: 0 } },
            y: { grid: { display: false } }
          }
        })
      };
    }
  };

  var cache = {};

  function payload(canvas) {
    var id = canvas.dataset.usageData;
    if (!(id in cache)) {
      var node = document.getElementById(id);
      cache[id] = node ? JSON.parse(node.textContent) : null;
    }
    var data = cache[id];
    var part = canvas.dataset.usagePart;
    return data && part ? data[part] : data;
  }

  function render() {
    if (!window.Chart) return;
    var Chart = window.Chart;
    Chart.defaults.color = cssVar("--body-quiet-color", "#666");
    Chart.defaults.borderColor = cssVar("--hairline-color", "#e8e8e8");
    Chart.defaults.font.family = cssVar("--font-family-primary", Chart.defaults.font.family);
    document.querySelectorAll("canvas[data-usage-chart]").forEach(function (canvas) {
      var build = BUILDERS[canvas.dataset.usageChart];
      var data = payload(canvas);
      if (!build || !data || Chart.getChart(canvas)) return;
      new Chart(canvas, build(data));
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", render);
  } else {
    render();
  }
})();
