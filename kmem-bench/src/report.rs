//! Aggregating samples into rows, and writing them out: the terminal table, CSV, JSON, SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::stats::{mops, ratio, Summary};

/// The allocator every ratio is taken against.
pub const REFERENCE: &str = "kmem";

/// One measured sample before aggregation.
#[derive(Clone, Debug, PartialEq)]
pub struct Raw {
    /// Workload name.
    pub workload: String,
    /// Case label within the workload.
    pub variant: String,
    /// Allocator label.
    pub allocator: String,
    /// Nanoseconds per operation in this sample.
    pub ns_per_op: f64,
    /// Peak RSS of the child process that took the sample, KiB.
    pub peak_rss_kib: Option<u64>,
    /// Workload-specific figures.
    pub extra: BTreeMap<String, f64>,
}

/// One line of the results: all repetitions of one (workload, variant, allocator).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// Workload name.
    pub workload: String,
    /// Case label.
    pub variant: String,
    /// Allocator label.
    pub allocator: String,
    /// Repetitions aggregated.
    pub runs: usize,
    /// ns/op over the repetitions.
    pub ns_per_op: Summary,
    /// Throughput at the median, millions of operations per second.
    pub mops: f64,
    /// Median peak RSS over the repetitions, KiB (child workloads only).
    pub peak_rss_kib: Option<u64>,
    /// Median ns/op divided by kmem's for the same case (> 1: kmem is faster).
    pub ratio_to_kmem: Option<f64>,
    /// Every sample, in the order taken.
    pub samples_ns_per_op: Vec<f64>,
    /// Medians of the workload-specific figures.
    pub extra: BTreeMap<String, f64>,
}

fn median_u64(v: &mut [u64]) -> Option<u64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// Groups samples by (workload, variant, allocator) in order of first appearance, summarises
/// them and computes each row's ratio to the reference allocator of the same case.
pub fn aggregate(raws: &[Raw]) -> Vec<Row> {
    let mut order: Vec<(String, String, String)> = Vec::new();
    let mut groups: BTreeMap<(String, String, String), Vec<&Raw>> = BTreeMap::new();
    for r in raws {
        let key = (r.workload.clone(), r.variant.clone(), r.allocator.clone());
        if !groups.contains_key(&key) {
            order.push(key.clone());
        }
        groups.entry(key).or_default().push(r);
    }
    let mut rows: Vec<Row> = order
        .into_iter()
        .filter_map(|key| {
            let g = &groups[&key];
            let samples: Vec<f64> = g.iter().map(|r| r.ns_per_op).collect();
            let ns = Summary::of(&samples)?;
            let mut rss: Vec<u64> = g.iter().filter_map(|r| r.peak_rss_kib).collect();
            let mut extra = BTreeMap::new();
            for k in g.iter().flat_map(|r| r.extra.keys()) {
                if extra.contains_key(k) {
                    continue;
                }
                let vals: Vec<f64> = g.iter().filter_map(|r| r.extra.get(k).copied()).collect();
                if let Some(s) = Summary::of(&vals) {
                    extra.insert(k.clone(), s.median);
                }
            }
            Some(Row {
                workload: key.0,
                variant: key.1,
                allocator: key.2,
                runs: samples.len(),
                mops: mops(ns.median),
                ns_per_op: ns,
                peak_rss_kib: median_u64(&mut rss),
                ratio_to_kmem: None,
                samples_ns_per_op: samples,
                extra,
            })
        })
        .collect();
    // Within a workload: cases in order of first appearance, then allocators in rank order.
    let mut first: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let k = (r.workload.clone(), r.variant.clone());
        if !first.contains(&k) {
            first.push(k);
        }
    }
    rows.sort_by_key(|r| {
        let w = first.iter().position(|k| k.0 == r.workload).unwrap_or(0);
        let v = first
            .iter()
            .position(|k| k.0 == r.workload && k.1 == r.variant)
            .unwrap_or(0);
        (w, v, allocator_rank(&r.allocator))
    });
    let refs: BTreeMap<(String, String), f64> = rows
        .iter()
        .filter(|r| r.allocator == REFERENCE)
        .map(|r| ((r.workload.clone(), r.variant.clone()), r.ns_per_op.median))
        .collect();
    for r in &mut rows {
        if let Some(&k) = refs.get(&(r.workload.clone(), r.variant.clone())) {
            r.ratio_to_kmem = ratio(r.ns_per_op.median, k);
        }
    }
    rows
}

/// Report order of allocators: kmem first, its typed caches next, then the peers.
pub fn allocator_rank(name: &str) -> usize {
    [
        "kmem",
        "kmem-cache",
        "system",
        "glibc",
        "mimalloc",
        "jemalloc",
        "tcmalloc",
    ]
    .iter()
    .position(|&n| n == name)
    .unwrap_or(usize::MAX)
}

fn fmt_ns(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_mib(kib: f64) -> String {
    format!("{:.1}", kib / 1024.0)
}

/// Formats a list of rows as an aligned text table.
fn table(header: &[&str], lines: &[Vec<String>], right: &[bool]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for l in lines {
        for (i, c) in l.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    let fmt_line = |out: &mut String, cells: &[String]| {
        let mut s = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i] - c.chars().count();
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            }
            s.push_str("  ");
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    fmt_line(
        &mut out,
        &header.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
    fmt_line(&mut out, &rule);
    for l in lines {
        fmt_line(&mut out, l);
    }
    out
}

/// The terminal table of one workload's rows.
pub fn workload_table(rows: &[&Row]) -> String {
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.variant.clone(),
                r.allocator.clone(),
                fmt_ns(r.ns_per_op.median),
                format!("{}–{}", fmt_ns(r.ns_per_op.min), fmt_ns(r.ns_per_op.max)),
                format!("{:.2}", r.mops),
                r.peak_rss_kib.map_or("-".into(), |k| fmt_mib(k as f64)),
                r.ratio_to_kmem.map_or("-".into(), |x| format!("{x:.2}x")),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "case",
            "allocator",
            "ns/op",
            "min–max",
            "Mops/s",
            "peak RSS MiB",
            "vs kmem",
        ],
        &lines,
        &[false, false, true, true, true, true, true],
    );
    let frag: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| {
            let e = &r.extra;
            let (base, filled, freed, released) = (
                *e.get("rss_base_kib")?,
                *e.get("rss_filled_kib")?,
                *e.get("rss_freed_kib")?,
                *e.get("rss_released_kib")?,
            );
            let grown = (filled - base).max(1.0);
            let floor = e.get("page_floor_kib").copied();
            Some(vec![
                r.allocator.clone(),
                fmt_mib(filled),
                fmt_mib(freed),
                fmt_mib(released),
                fmt_mib(freed - released),
                format!("{:.0}%", 100.0 * (filled - released) / grown),
                format!("{:.0}%", 100.0 * (released - base) / grown),
                floor.map_or("-".into(), fmt_mib),
                floor.map_or("-".into(), |f| {
                    format!("{:.2}x", (released - base) / f.max(1.0))
                }),
            ])
        })
        .collect();
    if !frag.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "allocator",
                "RSS filled",
                "after free",
                "after release",
                "by release",
                "returned",
                "kept",
                "page floor",
                "kept/floor",
            ],
            &frag,
            &[false, true, true, true, true, true, true, true, true],
        ));
        out.push_str(
            " (MiB; 10% of the objects stay live; returned/kept are shares of what the fill grew RSS by;\n  \
             page floor = the 4 KiB pages holding a byte of a live object; kept/floor = (after release - RSS before the fill) / page floor)\n",
        );
    }
    let idle: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| {
            let e = &r.extra;
            let (base, burst, freed, idle) = (
                *e.get("rss_base_kib")?,
                *e.get("rss_burst_kib")?,
                *e.get("rss_freed_kib")?,
                *e.get("rss_idle_kib")?,
            );
            Some(vec![
                r.allocator.clone(),
                fmt_mib(base),
                fmt_mib(burst),
                fmt_mib(freed),
                fmt_mib(idle),
                fmt_mib(idle - base),
            ])
        })
        .collect();
    if !idle.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "allocator",
                "RSS before",
                "burst",
                "freed",
                "after 1 s",
                "kept",
            ],
            &idle,
            &[false, true, true, true, true, true],
        ));
        out.push_str(
            " (MiB; kept = RSS one second after the burst was freed whole, minus RSS before it; no release call)\n",
        );
    }
    out
}

/// Quotes a CSV field when it holds a comma, quote or line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Extra columns written to the CSV (empty where a workload has no such figure).
pub const CSV_EXTRA: [&str; 7] = [
    "rss_base_kib",
    "rss_filled_kib",
    "rss_freed_kib",
    "rss_released_kib",
    "page_floor_kib",
    "rss_burst_kib",
    "rss_idle_kib",
];

/// All rows as CSV with a header line.
pub fn to_csv(rows: &[Row]) -> String {
    let mut out = String::from(
        "workload,variant,allocator,runs,ns_per_op_median,ns_per_op_min,ns_per_op_max,mops,peak_rss_kib,ratio_to_kmem",
    );
    for c in CSV_EXTRA {
        out.push(',');
        out.push_str(c);
    }
    out.push('\n');
    for r in rows {
        let _ = write!(
            out,
            "{},{},{},{},{:.3},{:.3},{:.3},{:.4},{},{}",
            csv_field(&r.workload),
            csv_field(&r.variant),
            csv_field(&r.allocator),
            r.runs,
            r.ns_per_op.median,
            r.ns_per_op.min,
            r.ns_per_op.max,
            r.mops,
            r.peak_rss_kib.map_or(String::new(), |k| k.to_string()),
            r.ratio_to_kmem.map_or(String::new(), |x| format!("{x:.4}")),
        );
        for c in CSV_EXTRA {
            out.push(',');
            if let Some(v) = r.extra.get(c) {
                let _ = write!(out, "{v:.0}");
            }
        }
        out.push('\n');
    }
    out
}

/// Everything a run produced, as written to `results.json`.
#[derive(Serialize)]
pub struct Report<'a> {
    /// When the run started (UTC).
    pub date: &'a str,
    /// CPU model.
    pub cpu: &'a str,
    /// CPUs available to the run.
    pub cores: usize,
    /// The resolved parameters.
    pub params: &'a crate::workloads::Params,
    /// Remarks (release calls used, allocators skipped, ...).
    pub notes: &'a [String],
    /// The results.
    pub rows: &'a [Row],
}

/// The run as pretty-printed JSON.
pub fn to_json(report: &Report<'_>) -> String {
    serde_json::to_string_pretty(report).expect("report serialises")
}

/// One bar of a chart: median with min–max whisker.
pub type Bar = Option<(f64, f64, f64)>;

/// Writes a grouped bar chart (`values[group][series]`) as SVG.
pub fn bar_chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[String],
    values: &[Vec<Bar>],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let ymax = values
        .iter()
        .flatten()
        .flatten()
        .map(|v| v.0.max(v.2))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n - 0.5), 0f64..ymax)?;
    let label = |x: &f64| {
        let r = x.round();
        if (x - r).abs() < 1e-6 && r >= 0.0 && (r as usize) < groups.len() {
            groups[r as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() + 1)
        .x_label_formatter(&label)
        .y_desc(y_desc)
        .draw()?;
    let k = series.len().max(1) as f64;
    let bw = 0.8 / k;
    for (si, name) in series.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let x0 = |gi: usize| gi as f64 - 0.4 + si as f64 * bw;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(gi, row)| {
                row.get(si).copied().flatten().map(|(m, _, _)| {
                    Rectangle::new([(x0(gi), 0.0), (x0(gi) + bw * 0.9, m)], color.filled())
                })
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 12, y + 6)], color.filled()));
        chart.draw_series(values.iter().enumerate().filter_map(|(gi, row)| {
            row.get(si)
                .copied()
                .flatten()
                .filter(|&(_, lo, hi)| hi > lo)
                .map(|(_, lo, hi)| {
                    let xc = x0(gi) + bw * 0.45;
                    PathElement::new(vec![(xc, lo), (xc, hi)], BLACK.stroke_width(2))
                })
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The chart of one workload: median ns/op per case and allocator with min–max whiskers, or
/// for fragmentation the RSS at each stage per allocator.
pub fn workload_chart(
    dir: &Path,
    workload: &str,
    rows: &[&Row],
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let path = dir.join(format!("{workload}.svg"));
    let uniq = |f: fn(&Row) -> &String| {
        let mut v: Vec<String> = Vec::new();
        for r in rows {
            if !v.contains(f(r)) {
                v.push(f(r).clone());
            }
        }
        v
    };
    let variants = uniq(|r| &r.variant);
    let allocs = uniq(|r| &r.allocator);
    let is_frag = rows.iter().any(|r| r.extra.contains_key("rss_filled_kib"));
    let is_idle = rows.iter().any(|r| r.extra.contains_key("rss_idle_kib"));
    if is_frag || is_idle {
        let (stages, names): (&[&str], &[&str]) = if is_frag {
            (
                &[
                    "rss_filled_kib",
                    "rss_freed_kib",
                    "rss_released_kib",
                    "page_floor_kib",
                ],
                &["filled", "after free 90%", "after release", "page floor"],
            )
        } else {
            (
                &["rss_burst_kib", "rss_freed_kib", "rss_idle_kib"],
                &["burst", "freed", "1 s later"],
            )
        };
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let values: Vec<Vec<Bar>> = allocs
            .iter()
            .map(|a| {
                let r = rows.iter().find(|r| &r.allocator == a);
                stages
                    .iter()
                    .map(|s| {
                        r.and_then(|r| r.extra.get(*s))
                            .map(|&kib| (kib / 1024.0, kib / 1024.0, kib / 1024.0))
                    })
                    .collect()
            })
            .collect();
        bar_chart(
            &path,
            &format!("{workload}: RSS"),
            "RSS (MiB)",
            &allocs,
            &names,
            &values,
        )?;
    } else {
        let values: Vec<Vec<Bar>> = variants
            .iter()
            .map(|v| {
                allocs
                    .iter()
                    .map(|a| {
                        rows.iter()
                            .find(|r| &r.variant == v && &r.allocator == a)
                            .map(|r| (r.ns_per_op.median, r.ns_per_op.min, r.ns_per_op.max))
                    })
                    .collect()
            })
            .collect();
        bar_chart(
            &path,
            &format!("{workload}: ns per alloc+free (median, min–max)"),
            "ns/op",
            &variants,
            &allocs,
            &values,
        )?;
    }
    Ok(path)
}

/// The peak-RSS chart of a workload whose rows carry one (a bar per allocator: the median
/// over repetitions of the largest peak RSS among its cases).
pub fn rss_chart(
    dir: &Path,
    workload: &str,
    rows: &[&Row],
) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let path = dir.join(format!("{workload}-rss.svg"));
    let mut allocs: Vec<String> = Vec::new();
    for r in rows {
        if !allocs.contains(&r.allocator) {
            allocs.push(r.allocator.clone());
        }
    }
    let values: Vec<Vec<Bar>> = allocs
        .iter()
        .map(|a| {
            let kib = rows
                .iter()
                .filter(|r| &r.allocator == a)
                .filter_map(|r| r.peak_rss_kib)
                .max();
            vec![kib.map(|k| {
                let m = k as f64 / 1024.0;
                (m, m, m)
            })]
        })
        .collect();
    bar_chart(
        &path,
        &format!("{workload}: peak RSS (median over runs)"),
        "peak RSS (MiB)",
        &allocs,
        &["peak RSS".to_string()],
        &values,
    )?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(variant: &str, alloc: &str, ns: f64) -> Raw {
        Raw {
            workload: "fastpath".into(),
            variant: variant.into(),
            allocator: alloc.into(),
            ns_per_op: ns,
            peak_rss_kib: None,
            extra: BTreeMap::new(),
        }
    }

    #[test]
    fn aggregate_medians_and_ratios() {
        let raws = vec![
            raw("64 B", "kmem", 10.0),
            raw("64 B", "system", 30.0),
            raw("64 B", "kmem", 12.0),
            raw("64 B", "system", 20.0),
            raw("64 B", "kmem", 11.0),
            raw("64 B", "system", 25.0),
            raw("256 B", "system", 40.0),
        ];
        let rows = aggregate(&raws);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].allocator.as_str(), rows[0].runs), ("kmem", 3));
        assert_eq!(rows[0].ns_per_op.median, 11.0);
        assert_eq!(rows[0].ratio_to_kmem, Some(1.0));
        assert_eq!(rows[1].ns_per_op.median, 25.0);
        assert_eq!((rows[1].ns_per_op.min, rows[1].ns_per_op.max), (20.0, 30.0));
        assert_eq!(rows[1].ratio_to_kmem, Some(25.0 / 11.0));
        assert_eq!(rows[1].samples_ns_per_op, vec![30.0, 20.0, 25.0]);
        // No kmem row for 256 B: no ratio.
        assert_eq!(rows[2].ratio_to_kmem, None);
        assert!((rows[1].mops - 40.0).abs() < 1e-9);
    }

    #[test]
    fn csv_quotes_and_columns() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("64 B, 2 thr"), "\"64 B, 2 thr\"");
        assert_eq!(csv_field("a\"b"), "\"a\"\"b\"");
        let mut r = raw("64 B, 2 thr", "kmem", 10.0);
        r.peak_rss_kib = Some(2048);
        r.extra.insert("rss_freed_kib".into(), 1234.0);
        let csv = to_csv(&aggregate(&[r]));
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), 17);
        assert_eq!(
            lines[1],
            "fastpath,\"64 B, 2 thr\",kmem,1,10.000,10.000,10.000,100.0000,2048,1.0000,,,1234,,,,"
        );
    }

    #[test]
    fn json_round_trips() {
        let rows = aggregate(&[raw("64 B", "kmem", 10.0), raw("64 B", "system", 15.0)]);
        let params = crate::workloads::Params {
            duration_ms: 10,
            runs: 1,
            threads: 2,
            sizes: vec![64],
            working_set: 10,
            frag_mib: 1,
            seed: 3,
            slabinfo: false,
            pin: false,
            cache_host: None,
        };
        let json = to_json(&Report {
            date: "2026-01-01 00:00:00 UTC",
            cpu: "cpu",
            cores: 2,
            params: &params,
            notes: &[],
            rows: &rows,
        });
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["rows"][1]["allocator"], "system");
        assert_eq!(v["rows"][1]["ratio_to_kmem"], 1.5);
        assert_eq!(v["rows"][0]["ns_per_op"]["median"], 10.0);
        assert_eq!(v["params"]["sizes"][0], 64);
    }

    #[test]
    fn table_has_all_rows_and_fragmentation_section() {
        let mut r = raw("fill", "system", 50.0);
        r.workload = "fragmentation".into();
        r.peak_rss_kib = Some(100 * 1024);
        for (k, v) in [
            ("rss_base_kib", 1024.0),
            ("rss_filled_kib", 101.0 * 1024.0),
            ("rss_freed_kib", 91.0 * 1024.0),
            ("rss_released_kib", 21.0 * 1024.0),
            ("page_floor_kib", 16.0 * 1024.0),
        ] {
            r.extra.insert(k.into(), v);
        }
        let rows = aggregate(&[r]);
        let t = workload_table(&rows.iter().collect::<Vec<_>>());
        assert!(t.contains("system"), "{t}");
        assert!(t.contains("100.0"), "{t}");
        // 70 MiB returned by release; 80% of the 100 MiB growth returned, 20% kept.
        assert!(
            t.contains("70.0") && t.contains("80%") && t.contains("20%"),
            "{t}"
        );
        // 20 MiB kept over a 16 MiB page floor.
        assert!(t.contains("16.0") && t.contains("1.25x"), "{t}");
    }

    #[test]
    fn idle_section_shows_what_was_kept() {
        let mut r = raw("64 MiB", "mimalloc", 40.0);
        r.workload = "idle".into();
        for (k, v) in [
            ("rss_base_kib", 2048.0),
            ("rss_burst_kib", 130.0 * 1024.0),
            ("rss_freed_kib", 90.0 * 1024.0),
            ("rss_idle_kib", 7.5 * 1024.0),
        ] {
            r.extra.insert(k.into(), v);
        }
        let rows = aggregate(&[r]);
        let t = workload_table(&rows.iter().collect::<Vec<_>>());
        assert!(t.contains("after 1 s") && t.contains("130.0"), "{t}");
        // 7.5 - 2 MiB kept.
        assert!(t.contains("5.5"), "{t}");
    }

    #[test]
    fn chart_is_written() {
        let dir = std::env::temp_dir().join(format!("kmem-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = aggregate(&[raw("64 B", "kmem", 10.0), raw("64 B", "system", 15.0)]);
        let p = workload_chart(&dir, "fastpath", &rows.iter().collect::<Vec<_>>()).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("system"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
