// DORA metrics charts (builds.presenters.dora_chart_data): every <canvas data-chart="..."> of
// the page is drawn with Chart.js (static/vendor) from the #metrics-data JSON block. Without
// JavaScript the figures above the charts and the CSV export still say everything.
(function () {
  "use strict";

  var source = document.getElementById("metrics-data");
  if (!source || typeof window.Chart === "undefined") return;
  var data = JSON.parse(source.textContent);
  var css = getComputedStyle(document.documentElement);
  function colour(name, fallback) {
    return (css.getPropertyValue(name) || "").trim() || fallback;
  }
  var OK = colour("--ok", "#067647");
  var BAD = colour("--bad", "#b42318");
  var WARN = colour("--warn", "#b54708");
  var ACCENT = colour("--accent", "#2f5bea");
  var MUTED = colour("--muted", "#667085");

  var common = {
    animation: false,
    responsive: true,
    maintainAspectRatio: false,
    interaction: { mode: "index", intersect: false },
    plugins: { legend: { position: "bottom", labels: { boxWidth: 12 } } },
  };

  function bars(label, values, background) {
    return { type: "bar", label: label, data: values, backgroundColor: background, stack: "day" };
  }

  var builders = {
    deployments: function () {
      return {
        type: "bar",
        data: {
          labels: data.labels,
          datasets: [
            bars("Live", data.live, OK),
            bars("Live, then rolled back or fixed", data.live_then_failed, WARN),
            bars("Failed or reverted", data.failed, BAD),
            bars("Rollbacks", data.rollbacks, MUTED),
          ],
        },
        options: Object.assign({}, common, {
          scales: {
            x: { stacked: true },
            y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } },
          },
        }),
      };
    },
    failure_rate: function () {
      return line("Change failure rate (%)", data.failure_rate, BAD, { min: 0, max: 100 });
    },
    lead_time_hours: function () {
      return line("Lead time, median (hours)", data.lead_time_hours, ACCENT, { beginAtZero: true });
    },
    duration_minutes: function () {
      return line("Duration, median (minutes)", data.duration_minutes, MUTED, { beginAtZero: true });
    },
  };

  function line(label, values, stroke, y) {
    return {
      type: "line",
      data: {
        labels: data.labels,
        datasets: [
          {
            label: label,
            data: values,
            borderColor: stroke,
            backgroundColor: stroke,
            spanGaps: true,
            pointRadius: 3,
          },
        ],
      },
      options: Object.assign({}, common, { scales: { y: y } }),
    };
  }

  document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
    var build = builders[canvas.getAttribute("data-chart")];
    if (!build) return;
    var chart = new window.Chart(canvas, build());
    canvas.setAttribute("data-drawn", String(chart.data.datasets.length));
  });
})();
