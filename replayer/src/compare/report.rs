//! The HTML report: one [`Summary`] as a single self-contained page, what `tapwire-replayer
//! report` writes and the metrics port serves at `/report`. Styles and charts are inline (the
//! charts are SVG drawn here), there is no script, and nothing is fetched: the page opens the
//! same offline, from a mail attachment or a CI artifact.
//!
//! Everything in a summary came from targets' responses, so all of it is escaped
//! ([`escape`]): a `<script>` in a body shows as text. The numbers a test reads carry
//! `data-*` hooks (`data-count="compared"`, `data-endpoint`, `data-path` with `data-signal`
//! and `data-candidate-count`, `data-role` with `data-responses`), holding the exact value
//! while the text shows it rounded or grouped.
//!
//! Laid out for a 1366×768 laptop screen: a width-limited column, tables with fixed layout and
//! wrapping cells, bodies in `<pre>` that wrap anywhere, so nothing scrolls sideways.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::summary::{EndpointSummary, Example, ExampleSide, PathSummary, Summary, TargetSummary};

/// Signal paths named per endpoint in the ranking table; the rest are in its details.
const TOP_PATHS: usize = 3;

/// The page for `summary`.
pub fn render(summary: &Summary) -> String {
    let mut page = String::with_capacity(16 << 10);
    let title = format!("tapwire comparison: {}", summary.source);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main class=\"page\">\n",
        escape(&title)
    );
    header(&mut page, summary);
    targets(&mut page, &summary.targets);
    endpoints(&mut page, summary);
    noise(&mut page, summary);
    page.push_str("</main>\n</body>\n</html>\n");
    page
}

/// Text made safe for HTML, in element content and in double-quoted attributes alike. Control
/// characters other than line breaks and tabs show as U+FFFD: a body may hold anything.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + text.len() / 8);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            '\n' | '\r' | '\t' => escaped.push(c),
            c if c.is_control() => escaped.push('\u{FFFD}'),
            c => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{margin:0;background:#f6f8fa;color:#1f2328;\
font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif}\
.page{max-width:1240px;margin:0 auto;padding:12px 20px 40px}\
h1{font-size:22px;margin:8px 0 4px}h2{font-size:18px;margin:28px 0 8px}\
h3{font-size:15px;margin:16px 0 6px}h4{font-size:14px;margin:10px 0 4px}\
section,header{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 16px 14px;\
margin-top:14px}\
section>h2:first-child,header h1{margin-top:0}\
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:2px 24px;margin:6px 0}\
.facts div{overflow-wrap:anywhere}.facts b{font-weight:600;color:#57606a;margin-right:6px}\
.verdict{font-size:16px;font-weight:600;margin:10px 0 2px;padding:6px 10px;border-radius:4px}\
.verdict.ok{background:#dafbe1}.verdict.bad{background:#ffebe9}.verdict.none{background:#eaeef2}\
table{width:100%;border-collapse:collapse;table-layout:fixed;margin:4px 0}\
th,td{padding:4px 8px;border-bottom:1px solid #d8dee4;text-align:left;vertical-align:top;\
overflow-wrap:anywhere}\
th{font-weight:600;color:#57606a;background:#f6f8fa}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
code{overflow-wrap:anywhere}\
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace;\
font-size:12.5px}\
pre{white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0;padding:6px 8px;background:#f6f8fa;\
border:1px solid #d8dee4;border-radius:4px;max-height:28em;overflow-y:auto}\
.muted{color:#57606a}.empty{color:#57606a;font-style:italic}\
.bar{display:block;width:100%;height:12px}\
.mix{font-size:12px;color:#57606a}\
.chart{display:block;width:100%;max-width:860px;height:auto}\
.legend{display:flex;flex-wrap:wrap;gap:4px 18px;font-size:13px;margin:4px 0}\
.swatch{display:inline-block;width:22px;height:4px;vertical-align:middle;margin-right:6px}\
details.endpoint{border:1px solid #d8dee4;border-radius:4px;margin:8px 0;padding:4px 10px}\
details.endpoint>summary{cursor:pointer;font-weight:600;overflow-wrap:anywhere}\
details.endpoint>summary .muted{font-weight:400}\
tr.noise td{color:#57606a;background:#fbfbfc}\
tr.divider td{font-weight:600;color:#57606a;background:#eaeef2}\
.tag{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px}\
.tag.signal{background:#ffebe9;color:#82071e}.tag.noise{background:#eaeef2;color:#57606a}\
.example{border-top:1px dashed #d0d7de;margin-top:10px;padding-top:6px}\
.sides{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:12px}\
.side h5{margin:4px 0;font-size:13px}\
ul.diffs{margin:2px 0 6px;padding-left:20px}\
";

fn header(page: &mut String, summary: &Summary) {
    page.push_str("<header>\n<h1>tapwire comparison report</h1>\n<div class=\"facts\">\n");
    fact(page, "Source", &escape(&summary.source));
    fact(page, "Generated", &escape(&utc(summary.generated_at_ms)));
    fact(
        page,
        "Reference",
        &format!(
            "<span data-reference=\"{0}\">{0}</span> (the candidate is compared with it)",
            escape(&summary.reference)
        ),
    );
    let pair = match &summary.noise_pair {
        Some((first, second)) => format!(
            "<span data-noise-pair=\"{0} {1}\">{0} vs {1}</span>",
            escape(first),
            escape(second)
        ),
        None => "none: no second reference, nothing is cancelled".to_owned(),
    };
    fact(page, "Noise pair", &pair);
    fact(
        page,
        "Noise thresholds",
        &format!(
            "{} relative, {} absolute",
            percent(summary.relative_threshold),
            percent(summary.absolute_threshold)
        ),
    );
    fact(
        page,
        "Compared",
        &format!(
            "<span data-count=\"compared\" data-value=\"{0}\">{1}</span> requests",
            summary.compared,
            grouped(summary.compared)
        ),
    );
    let not_compared_total: u64 = summary.not_compared.values().sum();
    let mut not_compared = format!(
        "<span data-count=\"not_compared\" data-value=\"{not_compared_total}\">{}</span>",
        grouped(not_compared_total)
    );
    if !summary.not_compared.is_empty() {
        let reasons: Vec<String> = summary
            .not_compared
            .iter()
            .map(|(reason, count)| {
                format!(
                    "<span data-not-compared=\"{0}\" data-value=\"{count}\">{0}: {1}</span>",
                    escape(reason),
                    grouped(*count)
                )
            })
            .collect();
        let _ = write!(not_compared, " ({})", reasons.join(", "));
    }
    fact(page, "Not compared", &not_compared);
    page.push_str("</div>\n");

    let differing = summary
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.paths.iter().any(|path| path.signal))
        .count();
    if summary.compared == 0 {
        page.push_str("<p class=\"verdict none\">No requests compared yet.</p>\n");
    } else if differing == 0 {
        page.push_str(
            "<p class=\"verdict ok\" data-verdict=\"same\">No differences beyond the noise.</p>\n",
        );
    } else {
        let _ = writeln!(
            page,
            "<p class=\"verdict bad\" data-verdict=\"differs\">The candidate differs beyond the \
             noise at <span data-count=\"differing_endpoints\" data-value=\"{differing}\">{differing}</span> \
             of {} endpoints.</p>",
            summary.endpoints.len()
        );
    }
    page.push_str("</header>\n");
}

fn fact(page: &mut String, label: &str, value_html: &str) {
    let _ = writeln!(page, "<div><b>{label}</b>{value_html}</div>");
}

fn targets(page: &mut String, targets: &[TargetSummary]) {
    page.push_str("<section id=\"targets\">\n<h2>Targets</h2>\n");
    if targets.is_empty() {
        page.push_str("<p class=\"empty\">No responses from any target yet.</p>\n</section>\n");
        return;
    }
    page.push_str(
        "<table class=\"targets\">\n<colgroup><col style=\"width:10%\"><col style=\"width:26%\">\
         <col style=\"width:10%\"><col style=\"width:22%\"><col style=\"width:8%\">\
         <col style=\"width:8%\"><col style=\"width:8%\"><col style=\"width:8%\"></colgroup>\n\
         <thead><tr><th>Role</th><th>URL</th><th class=\"num\">Responses</th><th>Status mix</th>\
         <th class=\"num\">p50</th><th class=\"num\">p90</th><th class=\"num\">p99</th>\
         <th class=\"num\">max</th></tr></thead>\n<tbody>\n",
    );
    for target in targets {
        let role = escape(&target.role);
        let latency = &target.latency;
        let _ = writeln!(
            page,
            "<tr data-role=\"{role}\" data-responses=\"{}\"><td>{role}</td><td>{}</td>\
             <td class=\"num\" data-count=\"responses\" data-value=\"{}\">{}</td><td>{}</td>\
             <td class=\"num\" data-latency=\"p50\" data-value=\"{}\">{}</td>\
             <td class=\"num\" data-latency=\"p90\" data-value=\"{}\">{}</td>\
             <td class=\"num\" data-latency=\"p99\" data-value=\"{}\">{}</td>\
             <td class=\"num\" data-latency=\"max\" data-value=\"{}\">{}</td></tr>",
            target.responses,
            escape(&target.name),
            target.responses,
            grouped(target.responses),
            status_mix(target),
            latency.p50_ms,
            milliseconds(latency.p50_ms),
            latency.p90_ms,
            milliseconds(latency.p90_ms),
            latency.p99_ms,
            milliseconds(latency.p99_ms),
            latency.max_ms,
            milliseconds(latency.max_ms),
        );
    }
    page.push_str("</tbody>\n</table>\n<h3>Response times</h3>\n");
    latency_chart(page, targets);
    page.push_str("</section>\n");
}

/// A stacked bar of the status classes, and their shares written out below it.
fn status_mix(target: &TargetSummary) -> String {
    let total: u64 = target.statuses.values().sum();
    if total == 0 {
        return "<span class=\"empty\">none</span>".to_owned();
    }
    let mut bar = String::from(
        "<svg class=\"bar\" viewBox=\"0 0 100 10\" preserveAspectRatio=\"none\" role=\"img\">",
    );
    let mut shares = Vec::new();
    let mut x = 0.0;
    for (class, &count) in &target.statuses {
        if count == 0 {
            continue;
        }
        let share = count as f64 / total as f64;
        let width = share * 100.0;
        let class = escape(class);
        let _ = write!(
            bar,
            "<rect x=\"{x:.3}\" y=\"0\" width=\"{width:.3}\" height=\"10\" fill=\"{}\">\
             <title>{class}: {count}</title></rect>",
            status_colour(&class)
        );
        x += width;
        shares.push(format!(
            "<span data-status=\"{class}\" data-value=\"{count}\">{class} {}</span>",
            percent(share)
        ));
    }
    bar.push_str("</svg>");
    format!("{bar}<div class=\"mix\">{}</div>", shares.join(" · "))
}

fn status_colour(class: &str) -> &'static str {
    match class {
        "2xx" => "#2da44e",
        "3xx" => "#0969da",
        "4xx" => "#d4a72c",
        "5xx" => "#cf222e",
        _ => "#8c959f",
    }
}

/// How each role's line is drawn: colour and dash, so lines differ without colour too.
fn role_stroke(role: &str) -> (&'static str, &'static str) {
    match role {
        "candidate" => ("#cf222e", ""),
        "baseline" => ("#0969da", "6 3"),
        "baseline2" => ("#1a7f37", "2 3"),
        "production" => ("#8250df", "10 3 2 3"),
        _ => ("#57606a", "4 4"),
    }
}

// The chart's frame, in SVG units (the SVG scales to the column's width).
const CHART_WIDTH: f64 = 760.0;
const CHART_HEIGHT: f64 = 230.0;
const PLOT_LEFT: f64 = 48.0;
const PLOT_RIGHT: f64 = 16.0;
const PLOT_TOP: f64 = 12.0;
const PLOT_BOTTOM: f64 = 40.0;

/// Every target's response times as a cumulative distribution on one chart, sharing a log-scale
/// x axis: the share of responses (y) that took at most x. Drawn as steps at the histogram's
/// bucket bounds, where the share is exact.
fn latency_chart(page: &mut String, targets: &[TargetSummary]) {
    let bounds = || {
        targets
            .iter()
            .flat_map(|target| target.latency.histogram.iter())
            .filter(|(bound, count)| *count > 0 && bound.is_finite() && *bound > 0.0)
            .map(|(bound, _)| *bound)
    };
    let (Some(least), Some(most)) = (
        bounds().min_by(f64::total_cmp),
        bounds().max_by(f64::total_cmp),
    ) else {
        page.push_str("<p class=\"empty\">No response times recorded yet.</p>\n");
        return;
    };
    // Whole decades, at least two, so the ticks are round numbers.
    let low = least.log10().floor();
    let high = most.log10().ceil().max(low + 2.0);
    let plot_width = CHART_WIDTH - PLOT_LEFT - PLOT_RIGHT;
    let plot_height = CHART_HEIGHT - PLOT_TOP - PLOT_BOTTOM;
    let x = |ms: f64| PLOT_LEFT + (ms.log10() - low) / (high - low) * plot_width;
    let y = |share: f64| PLOT_TOP + (1.0 - share) * plot_height;

    let _ = writeln!(
        page,
        "<svg class=\"chart\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" role=\"img\" \
         aria-label=\"Cumulative distribution of response times per target\" \
         font-family=\"system-ui, sans-serif\" font-size=\"12\">"
    );
    // Horizontal grid, with the 90th percentile's share among the quarters.
    for share in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
        let _ = writeln!(
            page,
            "<line x1=\"{PLOT_LEFT}\" x2=\"{right:.1}\" y1=\"{at:.1}\" y2=\"{at:.1}\" \
             stroke=\"#d8dee4\"/><text x=\"{label_x:.1}\" y=\"{label_y:.1}\" text-anchor=\"end\" \
             fill=\"#57606a\">{label}</text>",
            right = PLOT_LEFT + plot_width,
            at = y(share),
            label_x = PLOT_LEFT - 6.0,
            label_y = y(share) + 4.0,
            label = percent(share)
        );
    }
    // Vertical grid: every decade labelled; 2 and 5 between them when there are few decades.
    let decades = (high - low) as i32;
    for decade in low as i32..=high as i32 {
        let base = 10f64.powi(decade);
        let _ = writeln!(
            page,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{PLOT_TOP}\" y2=\"{1:.1}\" stroke=\"#d0d7de\"/>\
             <text x=\"{0:.1}\" y=\"{2:.1}\" text-anchor=\"middle\" fill=\"#57606a\" \
             data-tick=\"{base}\">{3}</text>",
            x(base),
            PLOT_TOP + plot_height,
            PLOT_TOP + plot_height + 16.0,
            escape(&milliseconds(base))
        );
        if decade == high as i32 {
            break;
        }
        for step in [2.0, 5.0] {
            let value = base * step;
            let _ = write!(
                page,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{PLOT_TOP}\" y2=\"{1:.1}\" \
                 stroke=\"#eaeef2\"/>",
                x(value),
                PLOT_TOP + plot_height
            );
            if decades <= 3 {
                let _ = write!(
                    page,
                    "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#8c959f\" \
                     font-size=\"10\">{}</text>",
                    x(value),
                    PLOT_TOP + plot_height + 14.0,
                    escape(&milliseconds(value))
                );
            }
            page.push('\n');
        }
    }
    let _ = writeln!(
        page,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#57606a\">response time \
         (log scale); y: share of responses at most that slow</text>",
        PLOT_LEFT + plot_width / 2.0,
        CHART_HEIGHT - 4.0
    );
    for target in targets {
        let total: u64 = target
            .latency
            .histogram
            .iter()
            .map(|(_, count)| count)
            .sum();
        if total == 0 {
            continue;
        }
        let (colour, dash) = role_stroke(&target.role);
        let mut points = format!("{PLOT_LEFT:.1},{:.1}", y(0.0));
        let mut seen = 0u64;
        for &(bound, count) in &target.latency.histogram {
            if count == 0 || !bound.is_finite() || bound <= 0.0 {
                continue;
            }
            let before = y(seen as f64 / total as f64);
            seen += count;
            let after = y(seen as f64 / total as f64);
            let at = x(bound);
            let _ = write!(points, " {at:.1},{before:.1} {at:.1},{after:.1}");
        }
        let _ = write!(points, " {:.1},{:.1}", PLOT_LEFT + plot_width, y(1.0));
        let _ = writeln!(
            page,
            "<polyline data-role=\"{}\" points=\"{points}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"2\" stroke-dasharray=\"{dash}\"/>",
            escape(&target.role)
        );
    }
    page.push_str("</svg>\n<div class=\"legend\">");
    for target in targets
        .iter()
        .filter(|target| target.latency.histogram.iter().any(|(_, count)| *count > 0))
    {
        let (colour, _) = role_stroke(&target.role);
        let _ = write!(
            page,
            "<span><span class=\"swatch\" style=\"background:{colour}\"></span>{} \
             <span class=\"muted\">p50 {}, p99 {}</span></span>",
            escape(&target.role),
            milliseconds(target.latency.p50_ms),
            milliseconds(target.latency.p99_ms)
        );
    }
    page.push_str("</div>\n");
}

fn endpoints(page: &mut String, summary: &Summary) {
    page.push_str("<section id=\"endpoints\">\n<h2>Endpoints by difference rate</h2>\n");
    if summary.endpoints.is_empty() {
        page.push_str("<p class=\"empty\">No requests compared yet.</p>\n</section>\n");
        return;
    }
    page.push_str(
        "<p class=\"muted\">The rate is that of the endpoint's most frequent difference beyond \
         the noise, out of its compared requests. Open an endpoint for its field paths and \
         examples.</p>\n",
    );
    if summary.endpoints_folded {
        page.push_str(
            "<p class=\"muted\">Endpoints beyond the tracked limit are counted together under \
             <code>(other endpoints)</code>.</p>\n",
        );
    }
    page.push_str(
        "<table class=\"ranking\">\n<colgroup><col style=\"width:5%\"><col style=\"width:33%\">\
         <col style=\"width:11%\"><col style=\"width:10%\"><col style=\"width:41%\"></colgroup>\n\
         <thead><tr><th class=\"num\">#</th><th>Endpoint</th><th class=\"num\">Compared</th>\
         <th class=\"num\">Rate</th><th>Top differing paths</th></tr></thead>\n<tbody>\n",
    );
    for (index, endpoint) in summary.endpoints.iter().enumerate() {
        let top: Vec<String> = signal_paths(endpoint)
            .take(TOP_PATHS)
            .map(|path| {
                format!(
                    "<code>{}</code> {}",
                    escape(&path.path),
                    percent(rate(path.candidate, endpoint.compared))
                )
            })
            .collect();
        let top = if top.is_empty() {
            "<span class=\"muted\">none beyond the noise</span>".to_owned()
        } else {
            top.join("<br>")
        };
        let _ = writeln!(
            page,
            "<tr data-endpoint=\"{0}\" data-rank=\"{1}\"><td class=\"num\">{1}</td>\
             <td><a href=\"#endpoint-{1}\"><code>{0}</code></a></td>\
             <td class=\"num\" data-count=\"compared\" data-value=\"{2}\">{3}</td>\
             <td class=\"num\" data-rate=\"{4}\">{5}</td><td>{top}</td></tr>",
            escape(&endpoint.name),
            index + 1,
            endpoint.compared,
            grouped(endpoint.compared),
            endpoint.difference_rate,
            percent(endpoint.difference_rate),
        );
    }
    page.push_str("</tbody>\n</table>\n");
    for (index, endpoint) in summary.endpoints.iter().enumerate() {
        endpoint_details(page, index + 1, endpoint);
    }
    page.push_str("</section>\n");
}

fn signal_paths(endpoint: &EndpointSummary) -> impl Iterator<Item = &PathSummary> {
    endpoint.paths.iter().filter(|path| path.signal)
}

fn endpoint_details(page: &mut String, rank: usize, endpoint: &EndpointSummary) {
    let signals = signal_paths(endpoint).count();
    let _ = writeln!(
        page,
        "<details class=\"endpoint\" id=\"endpoint-{rank}\" data-endpoint=\"{0}\"{5}>\
         <summary>{rank}. <code>{0}</code> <span class=\"muted\">{1} of {2} compared; {signals} \
         path{3} beyond the noise, {4} judged noise</span></summary>",
        escape(&endpoint.name),
        percent(endpoint.difference_rate),
        grouped(endpoint.compared),
        if signals == 1 { "" } else { "s" },
        endpoint.paths.len() - signals,
        // The most differing endpoint opens by itself: it is what the reader came for.
        if rank == 1 && signals > 0 {
            " open"
        } else {
            ""
        },
    );
    if endpoint.paths.is_empty() {
        page.push_str("<p class=\"empty\">No differences at this endpoint.</p>\n");
    } else {
        page.push_str(
            "<h4>Field paths</h4>\n<table class=\"paths\">\n<colgroup><col style=\"width:32%\">\
             <col style=\"width:22%\"><col style=\"width:16%\"><col style=\"width:14%\">\
             <col style=\"width:16%\"></colgroup>\n<thead><tr><th>Path</th><th>Kinds</th>\
             <th class=\"num\">Candidate differs</th><th class=\"num\">Noise pair differs</th>\
             <th>Verdict</th></tr></thead>\n<tbody>\n",
        );
        if signals == 0 {
            page.push_str(
                "<tr class=\"divider\"><td colspan=\"5\">No differences beyond the noise</td></tr>\n",
            );
        }
        let mut noise_started = false;
        for path in &endpoint.paths {
            if !path.signal && !noise_started {
                noise_started = true;
                page.push_str(
                    "<tr class=\"divider\"><td colspan=\"5\">Judged noise (not reported against \
                     the candidate)</td></tr>\n",
                );
            }
            path_row(page, endpoint, path);
        }
        page.push_str("</tbody>\n</table>\n");
    }
    page.push_str("<h4>Examples</h4>\n");
    if endpoint.examples.is_empty() {
        page.push_str("<p class=\"empty\">No examples kept for this endpoint.</p>\n");
    }
    for example in &endpoint.examples {
        example_view(page, example);
    }
    page.push_str("</details>\n");
}

fn path_row(page: &mut String, endpoint: &EndpointSummary, path: &PathSummary) {
    let kinds: Vec<String> = path
        .kinds
        .iter()
        .map(|(kind, count)| format!("{} {}", escape(kind), grouped(*count)))
        .collect();
    let verdict = if path.signal {
        "<span class=\"tag signal\">signal</span>"
    } else if path.noise > 0 {
        "<span class=\"tag noise\">noise</span>"
    } else {
        "<span class=\"tag noise\">below thresholds</span>"
    };
    let _ = writeln!(
        page,
        "<tr class=\"{}\" data-path=\"{1}\" data-signal=\"{2}\" data-candidate-count=\"{3}\" \
         data-noise-count=\"{4}\"><td><code>{1}</code></td><td>{5}</td>\
         <td class=\"num\">{6} ({7})</td><td class=\"num\">{8} ({9})</td><td>{verdict}</td></tr>",
        if path.signal { "signal" } else { "noise" },
        escape(&path.path),
        path.signal,
        path.candidate,
        path.noise,
        kinds.join(", "),
        grouped(path.candidate),
        percent(rate(path.candidate, endpoint.compared)),
        grouped(path.noise),
        percent(rate(path.noise, endpoint.compared)),
    );
}

fn example_view(page: &mut String, example: &Example) {
    let _ = writeln!(
        page,
        "<div class=\"example\" data-example=\"{}\"><div><b>Request</b> <code>{}</code> \
         <span class=\"muted\">id {}</span></div>",
        escape(&example.id),
        escape(&example.request_line),
        escape(&example.id)
    );
    if !example.differences.is_empty() {
        page.push_str("<ul class=\"diffs\">");
        for difference in &example.differences {
            let _ = write!(page, "<li><code>{}</code></li>", escape(difference));
        }
        page.push_str("</ul>\n");
    }
    page.push_str("<div class=\"sides\">");
    example_side(page, "reference", &example.reference);
    example_side(page, "candidate", &example.candidate);
    page.push_str("</div>\n</div>\n");
}

fn example_side(page: &mut String, side: &str, response: &ExampleSide) {
    let _ = write!(
        page,
        "<div class=\"side\" data-side=\"{side}\"><h5>{role} <span class=\"muted\">({side})</span>: \
         status <span data-status-code=\"{status}\">{status}</span>, {latency}</h5>",
        role = escape(&response.role),
        status = response.status,
        latency = milliseconds(response.latency_ms)
    );
    if !response.headers.is_empty() {
        let mut headers = String::new();
        for (name, value) in &response.headers {
            let _ = writeln!(headers, "{}: {}", escape(name), escape(value));
        }
        let _ = write!(page, "<pre class=\"headers\">{headers}</pre>");
    }
    let _ = write!(page, "<pre class=\"body\">{}</pre>", escape(&response.body));
    if response.truncated {
        page.push_str("<div class=\"muted\">(body cut to fit)</div>");
    }
    page.push_str("</div>");
}

fn noise(page: &mut String, summary: &Summary) {
    page.push_str(
        "<section id=\"noise\">\n<h2>Noise</h2>\n<p class=\"muted\">Paths not reported \
         against the candidate: the noise pair differs there too (timestamps, generated ids, \
         random tokens), or the candidate's rate is below the thresholds.</p>\n",
    );
    let endpoints: Vec<&EndpointSummary> = summary
        .endpoints
        .iter()
        .filter(|endpoint| endpoint.paths.iter().any(|path| !path.signal))
        .collect();
    if endpoints.is_empty() {
        page.push_str("<p class=\"empty\">No paths judged noise.</p>\n</section>\n");
        return;
    }
    page.push_str(
        "<table class=\"noise\">\n<colgroup><col style=\"width:30%\"><col style=\"width:34%\">\
         <col style=\"width:18%\"><col style=\"width:18%\"></colgroup>\n<thead><tr>\
         <th>Endpoint</th><th>Path</th><th class=\"num\">Noise pair differs</th>\
         <th class=\"num\">Candidate differs</th></tr></thead>\n<tbody>\n",
    );
    for endpoint in endpoints {
        for path in endpoint.paths.iter().filter(|path| !path.signal) {
            let _ = writeln!(
                page,
                "<tr data-noise-endpoint=\"{0}\" data-noise-path=\"{1}\"><td><code>{0}</code></td>\
                 <td><code>{1}</code></td><td class=\"num\">{2}</td><td class=\"num\">{3}</td></tr>",
                escape(&endpoint.name),
                escape(&path.path),
                percent(rate(path.noise, endpoint.compared)),
                percent(rate(path.candidate, endpoint.compared)),
            );
        }
    }
    page.push_str("</tbody>\n</table>\n</section>\n");
}

fn rate(count: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

/// `0.1234` as `12.3%`, keeping small rates visible (`0.03%`).
fn percent(fraction: f64) -> String {
    if !fraction.is_finite() {
        return "n/a".to_owned();
    }
    let value = fraction * 100.0;
    let digits = if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else if value > 0.0 {
        // Three significant digits, at most six decimals.
        (2 - value.log10().floor() as i32).clamp(2, 6) as usize
    } else {
        0
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}%")
}

/// A response time for people: `40 µs`, `0.42 ms`, `37 ms`, `1.25 s`.
fn milliseconds(ms: f64) -> String {
    if !ms.is_finite() {
        return "n/a".to_owned();
    }
    if ms > 0.0 && ms < 0.1 {
        return format!("{:.0} µs", ms * 1000.0);
    }
    if ms >= 1000.0 {
        let seconds = ms / 1000.0;
        if seconds == seconds.round() {
            format!("{seconds:.0} s")
        } else {
            format!("{seconds:.2} s")
        }
    } else if ms >= 10.0 || ms == ms.round() {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// `1234567` as `1,234,567`.
fn grouped(count: u64) -> String {
    let digits = count.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Milliseconds since the epoch as `2026-12-01 04:03:28 UTC`.
fn utc(ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::compare::summary::LatencySummary;

    fn rich() -> Summary {
        Summary {
            source: "live replay".into(),
            generated_at_ms: 1_764_561_600_000,
            reference: "baseline".into(),
            noise_pair: Some(("baseline".into(), "baseline2".into())),
            relative_threshold: 0.2,
            absolute_threshold: 0.0003,
            compared: 1234,
            not_compared: BTreeMap::from([("queue_full".into(), 7), ("too_large".into(), 2)]),
            targets: vec![
                target("candidate", "http://127.0.0.1:8081", 1234, 60.0),
                target("baseline", "http://127.0.0.1:8082", 1230, 10.0),
                target("baseline2", "http://127.0.0.1:8083", 1229, 11.0),
            ],
            endpoints: vec![
                EndpointSummary {
                    name: "GET /users/{n}".into(),
                    compared: 800,
                    difference_rate: 0.5,
                    paths: vec![
                        path("$.items[1].price", 400, 0, true),
                        path("$.generated_at", 800, 800, false),
                    ],
                    examples: vec![Example {
                        id: "abc123".into(),
                        request_line: "GET /users/42?x=1".into(),
                        differences: vec!["$.items[1].price changed_value".into()],
                        reference: side("baseline", "{\"price\": 10}"),
                        candidate: side("candidate", "{\"price\": 12}"),
                    }],
                },
                EndpointSummary {
                    name: "POST /orders".into(),
                    compared: 434,
                    difference_rate: 0.0,
                    paths: vec![path("headers.x-trace", 2, 0, false)],
                    examples: vec![],
                },
            ],
            endpoints_folded: true,
        }
    }

    fn target(role: &str, name: &str, responses: u64, p50: f64) -> TargetSummary {
        TargetSummary {
            role: role.into(),
            name: name.into(),
            responses,
            statuses: BTreeMap::from([("2xx".into(), responses - 4), ("5xx".into(), 4)]),
            latency: LatencySummary {
                p50_ms: p50,
                p90_ms: p50 * 2.0,
                p99_ms: p50 * 4.0,
                max_ms: p50 * 10.0,
                histogram: vec![(p50 / 2.0, 100), (p50, 500), (p50 * 4.0, responses - 600)],
            },
        }
    }

    fn path(path: &str, candidate: u64, noise: u64, signal: bool) -> PathSummary {
        PathSummary {
            path: path.into(),
            kinds: BTreeMap::from([("changed_value".into(), candidate.max(noise))]),
            candidate,
            noise,
            signal,
        }
    }

    fn side(role: &str, body: &str) -> ExampleSide {
        ExampleSide {
            role: role.into(),
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            truncated: false,
            latency_ms: 12.5,
        }
    }

    #[test]
    fn hostile_text_is_escaped_everywhere() {
        let mut summary = rich();
        let hostile = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>";
        summary.source = hostile.into();
        summary.targets[0].role = hostile.into();
        summary.targets[0].name = hostile.into();
        summary.not_compared.insert(hostile.into(), 1);
        summary.endpoints[0].name = hostile.into();
        summary.endpoints[0].paths[0].path = hostile.into();
        summary.endpoints[0].paths[1].path = hostile.into();
        summary.endpoints[0].paths[0]
            .kinds
            .insert(hostile.into(), 1);
        let example = &mut summary.endpoints[0].examples[0];
        example.id = hostile.into();
        example.request_line = hostile.into();
        example.differences.push(hostile.into());
        example.candidate.body = hostile.into();
        example
            .candidate
            .headers
            .push((hostile.into(), hostile.into()));
        example.reference.role = hostile.into();

        let page = render(&summary);
        assert!(!page.contains("<script"), "a <script> got through");
        assert!(!page.contains("<img"), "an <img> got through");
        assert!(!page.contains("'x'"), "a single quote got through");
        assert!(
            page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&gt;"),
            "the hostile text shows as text"
        );
    }

    #[test]
    fn control_characters_show_as_replacement() {
        assert_eq!(
            escape("a\u{0}b\u{1b}[31m\nc\td"),
            "a\u{FFFD}b\u{FFFD}[31m\nc\td"
        );
    }

    #[test]
    fn a_rich_summary_has_every_section() {
        let page = render(&rich());
        for needle in [
            "<header>",
            "live replay",
            "2025-12-01 04:00:00 UTC",
            "data-reference=\"baseline\"",
            "data-noise-pair=\"baseline baseline2\"",
            "20% relative, 0.03% absolute",
            "<section id=\"targets\">",
            "<svg class=\"bar\"",
            "<svg class=\"chart\"",
            "<polyline data-role=\"candidate\"",
            "<polyline data-role=\"baseline2\"",
            "<section id=\"endpoints\">",
            "<details class=\"endpoint\" id=\"endpoint-1\" data-endpoint=\"GET /users/{n}\" open>",
            "<pre class=\"body\">{&quot;price&quot;: 12}</pre>",
            "<pre class=\"headers\">content-type: application/json\n</pre>",
            "<li><code>$.items[1].price changed_value</code></li>",
            "Judged noise",
            "<section id=\"noise\">",
            "data-noise-path=\"$.generated_at\"",
            "(other endpoints)",
            "The candidate differs beyond the noise",
        ] {
            assert!(page.contains(needle), "missing {needle:?}");
        }
        // Endpoints stay in the summary's order (most differing first).
        let users = page.find("data-endpoint=\"GET /users/{n}\"").unwrap();
        let orders = page.find("data-endpoint=\"POST /orders\"").unwrap();
        assert!(users < orders);
    }

    #[test]
    fn counts_carry_their_data_hooks() {
        let page = render(&rich());
        for needle in [
            "data-count=\"compared\" data-value=\"1234\">1,234<",
            "data-count=\"not_compared\" data-value=\"9\">9<",
            "data-not-compared=\"queue_full\" data-value=\"7\"",
            "<tr data-role=\"candidate\" data-responses=\"1234\">",
            "<tr data-role=\"baseline\" data-responses=\"1230\">",
            "data-status=\"5xx\" data-value=\"4\"",
            "data-latency=\"p99\" data-value=\"240\">240 ms<",
            "<tr data-endpoint=\"GET /users/{n}\" data-rank=\"1\">",
            "<tr data-endpoint=\"POST /orders\" data-rank=\"2\">",
            "data-count=\"compared\" data-value=\"800\">800<",
            "data-rate=\"0.5\">50%<",
            "data-path=\"$.items[1].price\" data-signal=\"true\" data-candidate-count=\"400\" \
             data-noise-count=\"0\"",
            "data-path=\"$.generated_at\" data-signal=\"false\" data-candidate-count=\"800\" \
             data-noise-count=\"800\"",
            "data-path=\"headers.x-trace\" data-signal=\"false\" data-candidate-count=\"2\"",
            "data-count=\"differing_endpoints\" data-value=\"1\"",
        ] {
            assert!(page.contains(needle), "missing {needle:?}");
        }
    }

    #[test]
    fn the_page_references_nothing_on_the_network() {
        let page = render(&rich());
        for attribute in ["src=", "href=", "url(", "@import", "xlink:href"] {
            for (at, _) in page.match_indices(attribute) {
                let rest = &page[at + attribute.len()..];
                let value = rest.trim_start_matches(['"', '\'', ' ']);
                assert!(
                    value.starts_with('#'),
                    "{attribute} points outside the page: {}",
                    &rest[..rest.len().min(80)]
                );
            }
        }
        // The targets' URLs are shown as text, never linked.
        assert!(!page.contains("href=\"http"));
        assert!(!page.contains("<script"));
        assert!(!page.contains("<link"));
    }

    #[test]
    fn the_empty_summary_reads_well() {
        let page = render(&Summary::default());
        assert!(page.contains("No requests compared yet."));
        assert!(page.contains("No responses from any target yet."));
        assert!(page.contains("No paths judged noise."));
        assert!(page.contains("data-count=\"compared\" data-value=\"0\">0<"));
        assert!(page.ends_with("</html>\n"));
    }

    #[test]
    fn compared_without_differences_says_so() {
        let mut summary = rich();
        for endpoint in &mut summary.endpoints {
            endpoint.difference_rate = 0.0;
            endpoint.examples.clear();
            for path in &mut endpoint.paths {
                path.signal = false;
            }
        }
        let page = render(&summary);
        assert!(page.contains("data-verdict=\"same\">No differences beyond the noise.<"));
        assert!(page.contains("none beyond the noise"));
        assert!(page.contains("No examples kept for this endpoint."));
        assert!(!page.contains("data-signal=\"true\""));
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(percent(0.2), "20%");
        assert_eq!(percent(0.0003), "0.03%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(1.0), "100%");
        assert_eq!(percent(0.123_45), "12.3%");
        assert_eq!(percent(0.012_345), "1.23%");
        assert_eq!(milliseconds(0.0), "0 ms");
        assert_eq!(milliseconds(0.01), "10 µs");
        assert_eq!(milliseconds(0.42), "0.42 ms");
        assert_eq!(milliseconds(4.25), "4.2 ms");
        assert_eq!(milliseconds(37.4), "37 ms");
        assert_eq!(milliseconds(1000.0), "1 s");
        assert_eq!(milliseconds(1250.0), "1.25 s");
    }

    #[test]
    fn the_chart_labels_every_decade_in_milliseconds() {
        let page = render(&rich());
        // Histograms from 5 ms to 240 ms: decades 1 ms to 1 s.
        for tick in [
            "data-tick=\"1\">1 ms<",
            "data-tick=\"10\">10 ms<",
            "data-tick=\"100\">100 ms<",
            "data-tick=\"1000\">1 s<",
        ] {
            assert!(page.contains(tick), "missing {tick:?}");
        }
    }
}
