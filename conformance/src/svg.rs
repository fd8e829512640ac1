//! Small SVG charts drawn by the project: lines, paired bars, day timelines.

use std::fmt::Write as _;

use crate::report::{Bar, Chart, Lane, Series};

const W: f64 = 860.0;
const H: f64 = 300.0;
const ML: f64 = 70.0;
/// Room on the right for the legend (about 28 characters).
const MR: f64 = 200.0;
const MT: f64 = 30.0;
const MB: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// Escape text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Draw one chart as an inline `<svg>` element.
pub fn render(chart: &Chart) -> String {
    match chart {
        Chart::Lines {
            title,
            x_label,
            y_label,
            series,
        } => lines(title, x_label, y_label, series),
        Chart::Bars {
            title,
            y_label,
            bars,
        } => paired_bars(title, y_label, bars),
        Chart::Timeline { title, lanes } => timeline(title, lanes),
    }
}

fn open(out: &mut String, title: &str, height: f64) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
         viewBox=\"0 0 {W} {height}\" font-family=\"sans-serif\" font-size=\"11\">\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        W / 2.0,
        esc(title)
    );
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn axes(out: &mut String, x0: f64, x1: f64, y1: f64, x_label: &str, y_label: &str) {
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let _ = write!(
        out,
        "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let y = MT + ph * (1.0 - f);
        let x = ML + pw * f;
        let _ = write!(
            out,
            "<line x1=\"{ML}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            ML + pw,
            ML - 4.0,
            y + 4.0,
            fmt_num(y1 * f),
            MT + ph + 14.0,
            fmt_num(x0 + (x1 - x0) * f)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
         <text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{}</text>",
        ML + pw / 2.0,
        H - 6.0,
        esc(x_label),
        MT + ph / 2.0,
        MT + ph / 2.0,
        esc(y_label)
    );
}

fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let mut out = String::new();
    open(&mut out, title, H);
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut ymax) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        ymax = ymax.max(*y);
    }
    if !x0.is_finite() {
        x0 = 0.0;
        x1 = 1.0;
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = nice_max(ymax * 1.05);
    axes(&mut out, x0, x1, y1, x_label, y_label);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut d = String::new();
        for (j, (x, y)) in s.points.iter().enumerate() {
            let px = ML + pw * (x - x0) / (x1 - x0);
            let py = MT + ph * (1.0 - y / y1);
            let _ = write!(d, "{}{px:.1},{py:.1}", if j == 0 { "M" } else { " L" });
        }
        let dash = if s.dashed {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let ly = MT + 14.0 * i as f64 + 10.0;
        let _ = write!(
            out,
            "<path d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\"{dash}/>\
             <line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"2\"{dash}/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            W - MR + 8.0,
            W - MR + 26.0,
            W - MR + 30.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    out.push_str("</svg>");
    out
}

fn paired_bars(title: &str, y_label: &str, bars: &[Bar]) -> String {
    let mut out = String::new();
    open(&mut out, title, H);
    let ymax = bars
        .iter()
        .map(|b| b.measured.max(b.expected))
        .fold(0f64, f64::max);
    let y1 = nice_max(ymax * 1.05);
    let (pw, ph) = (W - ML - MR, H - MT - MB);
    let _ = write!(
        out,
        "<rect x=\"{ML}\" y=\"{MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let y = MT + ph * (1.0 - f);
        let _ = write!(
            out,
            "<line x1=\"{ML}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            ML + pw,
            ML - 4.0,
            y + 4.0,
            fmt_num(y1 * f)
        );
    }
    let _ = write!(
        out,
        "<text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{}</text>",
        MT + ph / 2.0,
        MT + ph / 2.0,
        esc(y_label)
    );
    let n = bars.len().max(1) as f64;
    let slot = pw / n;
    let bw = (slot * 0.35).min(40.0);
    for (i, b) in bars.iter().enumerate() {
        let cx = ML + slot * (i as f64 + 0.5);
        for (k, (v, color)) in [(b.measured, COLORS[0]), (b.expected, "#bbb")]
            .iter()
            .enumerate()
        {
            let h = ph * v / y1;
            let x = cx - bw + bw * k as f64;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{h:.1}\" fill=\"{color}\"/>",
                MT + ph - h
            );
        }
        let _ = write!(
            out,
            "<text x=\"{cx:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            MT + ph + 14.0,
            esc(&b.label)
        );
    }
    let _ = write!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">measured</text>\
         <rect x=\"{}\" y=\"{}\" width=\"12\" height=\"10\" fill=\"#bbb\"/><text x=\"{}\" y=\"{}\">expected</text>",
        W - MR + 8.0, MT + 2.0, COLORS[0], W - MR + 24.0, MT + 11.0,
        W - MR + 8.0, MT + 18.0, W - MR + 24.0, MT + 27.0
    );
    out.push_str("</svg>");
    out
}

fn timeline(title: &str, lanes: &[Lane]) -> String {
    let lane_h = 22.0;
    let height = MT + MB + lane_h * lanes.len().max(1) as f64;
    let mut out = String::new();
    open(&mut out, title, height);
    // Lane names are right-aligned before the plot: leave room for the longest (~6.5 px a char).
    let longest = lanes
        .iter()
        .map(|l| l.name.chars().count())
        .max()
        .unwrap_or(0) as f64;
    let ml = ML.max(longest * 6.5 + 12.0);
    let pw = W - ml - MR;
    let mut labels: Vec<&str> = Vec::new();
    for (i, lane) in lanes.iter().enumerate() {
        let y = MT + lane_h * i as f64;
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            ml - 6.0,
            y + 15.0,
            esc(&lane.name)
        );
        for (start, end, label) in &lane.spans {
            let idx = match labels.iter().position(|l| *l == label.as_str()) {
                Some(i) => i,
                None => {
                    labels.push(label);
                    labels.len() - 1
                }
            };
            let x = ml + pw * start / 24.0;
            let w = pw * (end - start) / 24.0;
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{}</title></rect>",
                y + 3.0,
                lane_h - 6.0,
                COLORS[idx % COLORS.len()],
                esc(label)
            );
        }
    }
    let base = MT + lane_h * lanes.len().max(1) as f64;
    for h in (0..=24).step_by(3) {
        let x = ml + pw * f64::from(h) / 24.0;
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{MT}\" x2=\"{x:.1}\" y2=\"{base}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{h:02}:00</text>",
            base + 14.0
        );
    }
    for (i, l) in labels.iter().enumerate() {
        let y = MT + 14.0 * i as f64;
        let _ = write!(
            out,
            "<rect x=\"{}\" y=\"{y}\" width=\"12\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            W - MR + 8.0,
            COLORS[i % COLORS.len()],
            W - MR + 24.0,
            y + 9.0,
            esc(l)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_escaped_text() {
        let charts = [
            Chart::Lines {
                title: "rate <A>".into(),
                x_label: "s".into(),
                y_label: "bit/s".into(),
                series: vec![Series {
                    name: "A & B".into(),
                    points: vec![(0.0, 1.0), (10.0, 2.0)],
                    dashed: false,
                }],
            },
            Chart::Bars {
                title: "copies".into(),
                y_label: "copies".into(),
                bars: vec![Bar {
                    label: "h1".into(),
                    measured: 2.0,
                    expected: 2.0,
                }],
            },
            Chart::Timeline {
                title: "day".into(),
                lanes: vec![Lane {
                    name: "worker 1".into(),
                    spans: vec![(0.0, 5.0, "primary".into()), (5.0, 24.0, "failover".into())],
                }],
            },
        ];
        for c in &charts {
            let s = render(c);
            assert!(s.starts_with("<svg") && s.ends_with("</svg>"), "{s}");
            assert_eq!(s.matches("<svg").count(), 1);
            assert!(
                !s.contains("<A>") && !s.contains("A & B"),
                "text escaped: {s}"
            );
        }
    }

    #[test]
    fn nice_max_rounds_up_to_1_2_2_5_5() {
        assert_eq!(nice_max(0.9), 1.0);
        assert_eq!(nice_max(1.3), 2.0);
        assert_eq!(nice_max(2.2), 2.5);
        assert_eq!(nice_max(12_582_912.0), 20_000_000.0);
    }
}
