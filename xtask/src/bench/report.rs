//! The combined report of `cargo xtask bench`: `artifacts/bench/REPORT.md`.
//!
//! Every benchmark writes its own report (`artifacts/bench/<name>.md`: tables with the baseline
//! measured in the same run, ratios and goals). After a run, the reports of every benchmark
//! (this run's, and earlier runs' for those not run now, marked with their date) are put
//! together under one header naming the machine and the commit, with a first table of every goal
//! and its result. README's figures are copied from it.
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result};

/// One goal of a benchmark report: the measurement, what was measured, and the verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Goal {
    /// The measurement (a table row's first cell, or a bullet's text before the figure).
    pub what: String,
    /// The rest of the row: figures, baseline, ratio, goal.
    pub figures: String,
    /// `PASS` or `MISS`.
    pub verdict: &'static str,
}

/// The goals of one benchmark's report: table rows with a `PASS`/`MISS` cell, and lines (or
/// bullets) of the form `what: figure (goal …: met|MISSED|PASS|MISS)`.
pub fn goals(report: &str) -> Vec<Goal> {
    let mut out = Vec::new();
    for line in report.lines().map(str::trim) {
        if let Some(row) = line.strip_prefix('|') {
            let cells: Vec<&str> = row
                .trim_end_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let Some(verdict) = cells.iter().find_map(|c| match *c {
                "PASS" | "**PASS**" => Some("PASS"),
                "MISS" | "**MISS**" => Some("MISS"),
                _ => None,
            }) else {
                continue;
            };
            let figures: Vec<&str> = cells[1..]
                .iter()
                .copied()
                .filter(|c| !c.is_empty() && !c.contains("PASS") && !c.contains("MISS"))
                .collect();
            out.push(Goal {
                what: cells[0].to_string(),
                figures: figures.join(" · "),
                verdict,
            });
        } else if let Some(at) = line.find("(goal") {
            let item = line.strip_prefix("- ").unwrap_or(line);
            let at = at - (line.len() - item.len());
            let verdict = if item[at..].contains("MISS") {
                "MISS"
            } else if item[at..].contains("met") || item[at..].contains("PASS") {
                "PASS"
            } else {
                continue;
            };
            let (what, figure) = item[..at].split_once(':').unwrap_or((&item[..at], ""));
            let goal = item[at + 1..].trim_end_matches(')');
            let goal = goal.split_once(':').map_or(goal, |(g, _)| g);
            out.push(Goal {
                what: what.trim().to_string(),
                figures: format!("{} · {goal}", figure.trim()),
                verdict,
            });
        }
    }
    out
}

/// A command's first line of output, or `?`.
fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(crate::root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// UTC `YYYY-MM-DD HH:MM` of a time.
fn utc(t: SystemTime) -> String {
    let s = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
    let (y, m, d) = periscope_proto::util::calendar::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A benchmark's report as a section of this one: its title (`#` or `##`) becomes `##`.
fn section(text: &str) -> String {
    let text = text.trim();
    match text.split_once('\n') {
        Some((first, rest)) if first.starts_with('#') => {
            format!("## {}\n{rest}", first.trim_start_matches('#').trim())
        }
        _ => text.to_string(),
    }
}

/// Writes `dir/REPORT.md` from the benchmark reports in `dir` (`names` in order; `ran` are the
/// ones this run produced). Returns its path.
pub fn write(dir: &Path, names: &[&str], ran: &[&str]) -> Result<std::path::PathBuf> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| {
            format!("{:.0} GiB", kb as f64 / 1_048_576.0)
        });
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let mut md = String::from("# Periscope benchmarks (`cargo xtask bench`)\n\n");
    let _ = writeln!(
        md,
        "Written {} on {cpu} ({cores} cores, {mem_gib}), Linux {}, commit {}. Every figure's \
         baseline was measured in the same run as the figure; see each benchmark's section for \
         its method. This run: {}.\n",
        utc(SystemTime::now()),
        first_line("uname", &["-r"]),
        first_line("git", &["rev-parse", "--short", "HEAD"]),
        if ran.is_empty() {
            "none (report rebuilt)".to_string()
        } else {
            ran.join(", ")
        },
    );
    let mut sections = String::new();
    md.push_str("## Goals\n\n| Benchmark | Measurement | Figures | Result |\n|---|---|---|---|\n");
    for name in names {
        let path = dir.join(format!("{name}.md"));
        let Ok(text) = fs::read_to_string(&path) else {
            let _ = writeln!(md, "| {name} | not run yet | | |");
            continue;
        };
        let when = fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_or("?".into(), utc);
        let from = if ran.contains(name) {
            "this run".to_string()
        } else {
            format!("an earlier run, {when}")
        };
        for g in goals(&text) {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} |",
                g.what.replace('|', "/"),
                g.figures.replace('|', "/"),
                g.verdict
            );
        }
        let _ = writeln!(
            sections,
            "\n---\n\n<!-- {name}: {from} -->\n*`{name}`: {from}.*\n\n{}",
            section(&text)
        );
    }
    md.push_str(&sections);
    let path = dir.join("REPORT.md");
    fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goals_come_from_table_rows_and_bullets() {
        let report = "\
# UI benchmark
| Measurement | Ours | Baseline | Ratio | Goal | Result |
|---|---:|---:|---:|---:|---|
| Service-map query | 46.5 ms | raw: 1600 ms | 0.029× | ≤ 100 ms | PASS |
| … before settling | 888 ms | raw: 1665 ms | 0.533× | | |
| First render | 1258 ms | small: 119 ms | 10× | ≤ 1000 ms | MISS |

- Periscope at 10k / at 10: **1.089×** (goal ≥ 0.95: met)
- Periscope / iptables at 10k: **1.59×** (goal ≥ 5: MISSED)
- iptables at 10k / at 10: 0.521× (a linear chain)

End to end (test bed, 10 s): agent CPU 2.6% of one core (goal ≤ 5% at 10,000 flows/s: PASS).
";
        let g = goals(report);
        assert_eq!(
            g,
            vec![
                Goal {
                    what: "Service-map query".into(),
                    figures: "46.5 ms · raw: 1600 ms · 0.029× · ≤ 100 ms".into(),
                    verdict: "PASS"
                },
                Goal {
                    what: "First render".into(),
                    figures: "1258 ms · small: 119 ms · 10× · ≤ 1000 ms".into(),
                    verdict: "MISS"
                },
                Goal {
                    what: "Periscope at 10k / at 10".into(),
                    figures: "**1.089×** · goal ≥ 0.95".into(),
                    verdict: "PASS"
                },
                Goal {
                    what: "Periscope / iptables at 10k".into(),
                    figures: "**1.59×** · goal ≥ 5".into(),
                    verdict: "MISS"
                },
                Goal {
                    what: "End to end (test bed, 10 s)".into(),
                    figures: "agent CPU 2.6% of one core · goal ≤ 5% at 10,000 flows/s".into(),
                    verdict: "PASS"
                },
            ]
        );
    }

    #[test]
    fn the_report_names_every_benchmark_and_keeps_its_section() {
        let dir = std::env::temp_dir().join(format!("periscope-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("lb.md"),
            "# LB\n\n- Periscope at 10k / at 10: **1.1×** (goal ≥ 0.95: met)\n",
        )
        .unwrap();
        let path = write(&dir, &["datapath", "lb"], &["lb"]).unwrap();
        let md = fs::read_to_string(&path).unwrap();
        assert!(md.contains("| datapath | not run yet | | |"), "{md}");
        assert!(
            md.contains("| lb | Periscope at 10k / at 10 | **1.1×** · goal ≥ 0.95 | PASS |"),
            "{md}"
        );
        assert!(md.contains("*`lb`: this run.*\n\n## LB"), "{md}");
        assert!(md.contains("This run: lb."), "{md}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn titles_become_sections() {
        assert_eq!(section("# A\nx\n"), "## A\nx");
        assert_eq!(section("## B (`b`)\n\ny"), "## B (`b`)\n\ny");
        assert_eq!(section("no title\nz"), "no title\nz");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01 00:00 UTC");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_714_566_601);
        assert_eq!(utc(t), "2024-05-01 12:30 UTC");
        let leap = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29 00:00 UTC");
    }
}
