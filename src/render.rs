//! Rendering shared by the run report (stage `report`) and the trend report across runs
//! (`distill report`): tables written both as Markdown and HTML, line charts as inline
//! SVG, and a self-contained HTML page (no scripts, nothing fetched).
use std::fmt::Write as _;

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One table: a header and rows of cells, rendered to both formats. A cell starting with
/// `+` or `-` is a delta and coloured; a cell listed in `flagged` (row, column) is a
/// regression: red background in HTML, bold with a marker in Markdown.
pub struct Table {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub flagged: Vec<(usize, usize)>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str], rows: Vec<Vec<String>>) -> Self {
        Table {
            title: title.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows,
            flagged: Vec::new(),
        }
    }

    pub fn markdown(&self, out: &mut String) {
        let _ = writeln!(out, "### {}\n", self.title);
        let _ = writeln!(out, "| {} |", self.header.join(" | "));
        let _ = writeln!(out, "|{}|", vec!["---"; self.header.len()].join("|"));
        for (i, r) in self.rows.iter().enumerate() {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(j, c)| {
                    if self.flagged.contains(&(i, j)) {
                        format!("**{c} (regression)**")
                    } else {
                        c.clone()
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }

    pub fn html(&self, out: &mut String) {
        let _ = write!(out, "<h3>{}</h3>\n<table>\n<tr>", esc(&self.title));
        for h in &self.header {
            let _ = write!(out, "<th>{}</th>", esc(h));
        }
        out.push_str("</tr>\n");
        for (i, r) in self.rows.iter().enumerate() {
            out.push_str("<tr>");
            for (j, c) in r.iter().enumerate() {
                let class = if self.flagged.contains(&(i, j)) {
                    " class=\"regression\""
                } else if c.starts_with('-') {
                    " class=\"neg\""
                } else if c.starts_with('+') {
                    " class=\"pos\""
                } else {
                    ""
                };
                let _ = write!(out, "<td{class}>{}</td>", esc(c));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
}

/// The start of a self-contained HTML page (inline style, no scripts), with its `<h1>`.
pub fn html_head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"/><title>{t}</title>\n<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td.pos{{color:#080}}td.neg{{color:#b00}}td.regression{{background:#fdd;color:#b00;font-weight:bold}}pre{{background:#f6f6f6;padding:1em}}div.health{{border:2px solid #888;border-radius:6px;padding:0 1em;margin:1em 0;background:#fafafa}}svg text{{font-family:sans-serif}}</style></head>\n<body>\n<h1>{t}</h1>\n",
        t = esc(title)
    )
}

pub const HTML_TAIL: &str = "</body>\n</html>\n";

/// The names of a chart's axes: `[x, y]`.
pub type Axes<'a> = [&'a str; 2];

/// Width, height and margin of every chart.
const CHART: (f64, f64, f64) = (640.0, 260.0, 44.0);

/// A chart's frame: the open `<svg>`, its title, the plot area's box, the `corners`
/// (`[y top, y bottom, x left, x right]`) and the axis names, under the x axis and along
/// the y axis.
fn frame(title: &str, corners: [&str; 4], axes: Axes) -> String {
    let (w, h, m) = CHART;
    let [top, bottom, left, right] = corners.map(esc);
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\"><title>{}</title>\n\
         <rect x=\"{m}\" y=\"{m}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n\
         <text x=\"{m}\" y=\"{}\" font-size=\"11\">{top}</text><text x=\"{m}\" y=\"{}\" font-size=\"11\">{bottom}</text>\n\
         <text x=\"{m}\" y=\"{}\" font-size=\"11\">{left}</text><text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{right}</text>\n\
         <text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"12\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 12 {})\">{}</text>\n",
        esc(title),
        w - 2.0 * m,
        h - 2.0 * m,
        m - 4.0,
        h - m + 14.0,
        h - m + 28.0,
        w - m,
        h - m + 28.0,
        w / 2.0,
        h - 4.0,
        esc(axes[0]),
        h / 2.0,
        h / 2.0,
        esc(axes[1]),
    )
}

/// A line chart of named series over x, as inline SVG; `x_labels` are printed under the
/// first and last x, `axes` name the axes. Every finite point gets a marker, so a series
/// of one point shows.
pub fn svg_chart(
    title: &str,
    x: &[f64],
    series: &[(String, Vec<f64>)],
    x_labels: [&str; 2],
    axes: Axes,
) -> String {
    const COLORS: [&str; 6] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
    ];
    let (w, h, m) = CHART;
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let (y0, y1) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (y0, y1) = if ys.is_empty() {
        (0.0, 1.0)
    } else if y1 > y0 {
        (y0, y1)
    } else {
        (y0 - 1.0, y1 + 1.0)
    };
    let x0 = x.first().copied().unwrap_or(0.0);
    let x1 = x.last().copied().unwrap_or(1.0).max(x0 + 1.0);
    let px = |v: f64| m + (v - x0) / (x1 - x0) * (w - 2.0 * m);
    let py = |v: f64| h - m - (v - y0) / (y1 - y0) * (h - 2.0 * m);
    let (top, bottom) = (format!("{y1:.4}"), format!("{y0:.4}"));
    let mut s = frame(title, [&top, &bottom, x_labels[0], x_labels[1]], axes);
    for (i, (name, ys)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = x
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(&xv, &yv)| (px(xv), py(yv)))
            .collect();
        let text: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{a:.1},{b:.1}"))
            .collect();
        let _ = writeln!(s, "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>", text.join(" "));
        if points.len() <= 60 {
            for (a, b) in &points {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{a:.1}\" cy=\"{b:.1}\" r=\"2.5\" fill=\"{color}\"/>"
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            w - m + 4.0 - 120.0,
            m + 14.0 * (i as f64 + 1.0),
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A histogram of named samples over shared bins, as inline SVG: for each series, the
/// share of its values in each of `bins` equal bins between the smallest and the largest
/// value of all series, drawn as outlined steps (so overlapping series stay readable).
pub fn svg_histogram(
    title: &str,
    series: &[(String, Vec<f64>)],
    bins: usize,
    axes: Axes,
) -> String {
    const COLORS: [&str; 3] = ["#2ca02c", "#d62728", "#1f77b4"];
    let (w, h, m) = CHART;
    let all = series
        .iter()
        .flat_map(|s| s.1.iter())
        .copied()
        .filter(|v| v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (lo, hi) = match lo.is_finite() && hi > lo {
        true => (lo, hi),
        false => (lo.min(0.0), lo.max(0.0) + 1.0),
    };
    let bins = bins.max(1);
    let shares: Vec<Vec<f64>> = series
        .iter()
        .map(|(_, v)| {
            let mut counts = vec![0.0; bins];
            for &x in v.iter().filter(|x| x.is_finite()) {
                let b = (((x - lo) / (hi - lo)) * bins as f64) as usize;
                counts[b.min(bins - 1)] += 1.0;
            }
            let n = counts.iter().sum::<f64>().max(1.0);
            counts.into_iter().map(|c| c / n).collect()
        })
        .collect();
    let top = shares
        .iter()
        .flatten()
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let px = |b: f64| m + b / bins as f64 * (w - 2.0 * m);
    let py = |v: f64| h - m - v / top * (h - 2.0 * m);
    let labels = [
        format!("{top:.3}"),
        "0".into(),
        format!("{lo:.2}"),
        format!("{hi:.2}"),
    ];
    let mut s = frame(
        title,
        [&labels[0], &labels[1], &labels[2], &labels[3]],
        axes,
    );
    for (i, ((name, v), share)) in series.iter().zip(&shares).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = vec![format!("{:.1},{:.1}", px(0.0), py(0.0))];
        for (b, &y) in share.iter().enumerate() {
            points.push(format!("{:.1},{:.1}", px(b as f64), py(y)));
            points.push(format!("{:.1},{:.1}", px(b as f64 + 1.0), py(y)));
        }
        points.push(format!("{:.1},{:.1}", px(bins as f64), py(0.0)));
        let _ = writeln!(
            s,
            "<polyline class=\"bars\" fill=\"{color}\" fill-opacity=\"0.25\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{} ({})</text>",
            w - m - 150.0,
            m + 14.0 * (i as f64 + 1.0),
            esc(name),
            v.len()
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn fmt(v: f64) -> String {
    format!("{v:.4}")
}

pub fn delta(v: f64) -> String {
    format!("{v:+.4}")
}

/// `YYYY-MM-DD HH:MM` (UTC) of a Unix time.
pub fn utc(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        // 2000-02-29 is a leap day; 951782400 is its midnight.
        assert_eq!(utc(951_782_400 + 3_660), "2000-02-29 01:01");
        assert_eq!(utc(1_795_305_600), "2026-11-22 00:00");
    }

    #[test]
    fn flagged_cells_are_marked_in_both_formats() {
        let mut t = Table::new("t", &["a", "b"], vec![vec!["1".into(), "-0.2".into()]]);
        t.flagged.push((0, 1));
        let (mut md, mut html) = (String::new(), String::new());
        t.markdown(&mut md);
        t.html(&mut html);
        assert!(md.contains("**-0.2 (regression)**"));
        assert!(html.contains("<td class=\"regression\">-0.2</td>"));
        assert!(html.contains("<td>1</td>"));
    }
}
