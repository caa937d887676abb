//! Reading long-term history back: the part of a chart older than the embedded window comes
//! from the long-term store the [`super::influx`] sink writes to.
//!
//! The store is read through its Prometheus-style query API with MetricsQL, as VictoriaMetrics
//! serves it (`/api/v1/query_range`, `/api/v1/query`). The server computes every bucket: one
//! request asks for the six rollups a [`Bucket`] needs (`count`, `min`, `max`, `sum`, `last`
//! and the last sample's time, to merge series) with `aggr_over_time`, so a year of 10 Hz data
//! costs the hub as much as the buckets it returns, not the samples behind them.
//!
//! # Buckets exactly like the embedded store's
//! Buckets are aligned to multiples of the step since the epoch and hold the samples in
//! `[start, start + step)` that also lie in the requested range. A MetricsQL window `[d]`
//! evaluated at `t` covers `(t - d, t]`, so a whole bucket is evaluated at `start + step - 1`
//! with `d = step`. A bucket cut by the range's own `from` or `to` is read with an instant query
//! whose window is exactly the cut part. That makes at most three requests, sent together.
//!
//! # Several series for one metric
//! The sink tags each point with the gateway it came through, so a machine moved to another
//! gateway has two series of one metric. Their buckets are merged; the last value is the one
//! with the later sample time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::MetricName;
use serde::Deserialize;

use super::influx::{InfluxConfig, InfluxConfigError};
use super::{Agg, Bucket, Retention, TimeRange, align_down};
use crate::twin::TwinKey;

/// The rollups asked for, in the order [`Agg`] is built from them.
const ROLLUPS: [&str; 6] = [
    "count_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "last_over_time",
    "tlast_over_time",
];

/// Why a read from the long-term store failed.
#[derive(Debug, thiserror::Error)]
pub enum LongTermError {
    /// No answer: connection refused, reset or timed out.
    #[error("long-term store at {url} did not answer: {reason}")]
    Unreachable {
        /// The query URL.
        url: String,
        /// What the HTTP client said.
        reason: String,
    },
    /// The server answered with an error status or `"status": "error"`.
    #[error("long-term store refused the query ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error text.
        message: String,
    },
    /// The answer is not the JSON the query API defines.
    #[error("long-term store answered something unreadable: {0}")]
    BadAnswer(String),
}

/// Which part of a requested range each store answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Read from the long-term store.
    pub long_term: Option<TimeRange>,
    /// Read from the embedded store.
    pub embedded: Option<TimeRange>,
}

/// The reader; one per hub, shared by the API handlers.
#[derive(Debug)]
pub struct LongTermReader {
    client: reqwest::Client,
    query_url: String,
    measurement: String,
    retention: Retention,
    reads_ok: AtomicU64,
    reads_failed: AtomicU64,
    buckets_read: AtomicU64,
}

impl LongTermReader {
    /// A reader for the store `config` writes to, when it names a `query_url`; `None` without.
    /// `retention` is the embedded store's: what is older than its rollups is read back.
    pub fn new(
        config: &InfluxConfig,
        retention: Retention,
    ) -> Result<Option<LongTermReader>, InfluxConfigError> {
        config.validate()?;
        let Some(query_url) = &config.query_url else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()
            .map_err(|err| InfluxConfigError {
                key: "query_url",
                reason: format!("cannot build an HTTP client: {err}"),
            })?;
        Ok(Some(LongTermReader {
            client,
            query_url: query_url.trim_end_matches('/').to_owned(),
            measurement: config.measurement.clone(),
            retention,
            reads_ok: AtomicU64::new(0),
            reads_failed: AtomicU64::new(0),
            buckets_read: AtomicU64::new(0),
        }))
    }

    /// The first millisecond the embedded store still holds at `now_ms`: compaction deletes
    /// rollups whose bucket starts before this.
    pub fn embedded_from_ms(&self, now_ms: u64) -> u64 {
        align_down(
            now_ms.saturating_sub(self.retention.rollup_ms),
            self.retention.rollup_step_ms,
        )
    }

    /// Splits `range` at the first bucket boundary at or after the embedded store's start, so
    /// no bucket is assembled from both stores.
    pub fn split(&self, range: TimeRange, step_ms: u64, now_ms: u64) -> Split {
        let step = step_ms.max(1);
        let horizon = self.embedded_from_ms(now_ms);
        let boundary = align_down(horizon, step);
        let boundary = if boundary < horizon {
            boundary.saturating_add(step)
        } else {
            boundary
        };
        let at = boundary.clamp(range.from_ms, range.to_ms);
        let part =
            |from_ms: u64, to_ms: u64| (from_ms < to_ms).then_some(TimeRange { from_ms, to_ms });
        Split {
            long_term: part(range.from_ms, at),
            embedded: part(at, range.to_ms),
        }
    }

    /// The buckets of one metric of one twin within `range`, oldest first, empty ones left out.
    pub async fn buckets(
        &self,
        key: &TwinKey,
        metric: &MetricName,
        range: TimeRange,
        step_ms: u64,
    ) -> Result<Vec<Bucket>, LongTermError> {
        let result = self.read(key, metric, range, step_ms).await;
        match &result {
            Ok(buckets) => {
                self.reads_ok.fetch_add(1, Ordering::Relaxed);
                self.buckets_read
                    .fetch_add(buckets.len() as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.reads_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn read(
        &self,
        key: &TwinKey,
        metric: &MetricName,
        range: TimeRange,
        step_ms: u64,
    ) -> Result<Vec<Bucket>, LongTermError> {
        let selector = selector(&self.measurement, key, metric);
        let answers = futures_util::future::try_join_all(
            plan(range, step_ms)
                .into_iter()
                .map(|request| self.send(request, &selector)),
        )
        .await?;
        let mut by_series: BTreeMap<(String, u64), Partial> = BTreeMap::new();
        for (request, answer) in answers {
            collect(request, answer, &mut by_series)?;
        }
        let mut merged: BTreeMap<u64, Agg> = BTreeMap::new();
        for ((_, start), partial) in by_series {
            let agg = partial.finish(start)?;
            match merged.get_mut(&start) {
                Some(existing) => existing.merge(&agg),
                None => {
                    merged.insert(start, agg);
                }
            }
        }
        Ok(merged
            .into_iter()
            .map(|(start, agg)| agg.bucket(start))
            .collect())
    }

    async fn send(
        &self,
        request: Request,
        selector: &str,
    ) -> Result<(Request, Answer), LongTermError> {
        let window = match request {
            Request::Range { step_ms, .. } => step_ms,
            Request::Instant { window_ms, .. } => window_ms,
        };
        let rollups = ROLLUPS.map(|r| format!("{r:?}")).join(",");
        let query = format!("aggr_over_time(({rollups}),{selector}[{window}ms])");
        let (path, params) = match request {
            Request::Range {
                first_eval_ms,
                last_eval_ms,
                step_ms,
            } => (
                "/api/v1/query_range",
                vec![
                    ("query", query),
                    ("start", seconds(first_eval_ms)),
                    ("end", seconds(last_eval_ms)),
                    ("step", format!("{step_ms}ms")),
                    // A cached answer may be realigned to the step; these windows must not be.
                    ("nocache", "1".into()),
                ],
            ),
            Request::Instant { eval_ms, .. } => (
                "/api/v1/query",
                vec![
                    ("query", query),
                    ("time", seconds(eval_ms)),
                    ("nocache", "1".into()),
                ],
            ),
        };
        let url = format!("{}{path}", self.query_url);
        let unreachable = |err: reqwest::Error| LongTermError::Unreachable {
            url: url.clone(),
            reason: err.to_string(),
        };
        let response = self
            .client
            .post(&url)
            .form(&params)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(unreachable)?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|err| {
            if status == 200 {
                LongTermError::BadAnswer(err.to_string())
            } else {
                LongTermError::Refused {
                    status,
                    message: String::from_utf8_lossy(&body).chars().take(500).collect(),
                }
            }
        })?;
        if status != 200 || answer.status != "success" {
            return Err(LongTermError::Refused {
                status,
                message: answer.error.unwrap_or_else(|| answer.status.clone()),
            });
        }
        Ok((request, answer))
    }

    /// The read counters as Prometheus text.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP demolab_history_long_term_reads_total History reads from the long-term store, by outcome.\n\
             # TYPE demolab_history_long_term_reads_total counter\n\
             demolab_history_long_term_reads_total{{outcome=\"ok\"}} {}\n\
             demolab_history_long_term_reads_total{{outcome=\"failed\"}} {}\n\
             # HELP demolab_history_long_term_buckets_total Buckets read from the long-term store.\n\
             # TYPE demolab_history_long_term_buckets_total counter\n\
             demolab_history_long_term_buckets_total {}",
            self.reads_ok.load(Ordering::Relaxed),
            self.reads_failed.load(Ordering::Relaxed),
            self.buckets_read.load(Ordering::Relaxed),
        );
        out
    }
}

/// One query against the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Whole buckets: evaluated at every `start + step - 1` from the first to the last.
    Range {
        first_eval_ms: u64,
        last_eval_ms: u64,
        step_ms: u64,
    },
    /// One bucket cut by the range: the window `(eval - window, eval]` is the cut part.
    Instant {
        eval_ms: u64,
        window_ms: u64,
        bucket_start_ms: u64,
    },
}

/// The requests that cover `range` in buckets of `step_ms`: a cut first bucket, the whole
/// ones, a cut last bucket.
fn plan(range: TimeRange, step_ms: u64) -> Vec<Request> {
    let step = step_ms.max(1);
    let mut requests = Vec::new();
    let mut next = range.from_ms;
    let first_start = align_down(range.from_ms, step);
    let first_end = first_start.saturating_add(step).min(range.to_ms);
    if first_start != range.from_ms || first_end - first_start < step {
        requests.push(Request::Instant {
            eval_ms: first_end - 1,
            window_ms: first_end - range.from_ms,
            bucket_start_ms: first_start,
        });
        next = first_end;
    }
    let whole = range.to_ms.saturating_sub(next) / step;
    if whole > 0 {
        requests.push(Request::Range {
            first_eval_ms: next + step - 1,
            last_eval_ms: next + whole * step - 1,
            step_ms: step,
        });
        next += whole * step;
    }
    if next < range.to_ms {
        requests.push(Request::Instant {
            eval_ms: range.to_ms - 1,
            window_ms: range.to_ms - next,
            bucket_start_ms: next,
        });
    }
    requests
}

/// `{__name__="machine_spindle.power_w",lab="lab-a",machine="lathe-1"}`: the sink's series
/// for one metric of one twin, whichever gateway it came through.
fn selector(measurement: &str, key: &TwinKey, metric: &MetricName) -> String {
    format!(
        "{{__name__={},lab={},machine={}}}",
        quoted(&format!("{measurement}_{metric}")),
        quoted(key.lab.as_str()),
        quoted(key.machine.as_str()),
    )
}

/// A MetricsQL string literal. Ids and metric names cannot hold quotes or backslashes; the
/// configured measurement could.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Milliseconds as the API's decimal seconds.
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnswerData {
    result: Vec<AnswerSeries>,
}

#[derive(Debug, Deserialize)]
struct AnswerSeries {
    metric: BTreeMap<String, String>,
    /// Range queries: `[seconds, "value"]` per evaluation.
    #[serde(default)]
    values: Vec<(f64, String)>,
    /// Instant queries: the one evaluation.
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// The rollups of one series in one bucket, as they arrive.
#[derive(Debug, Default)]
struct Partial([Option<f64>; 6]);

impl Partial {
    fn finish(&self, start: u64) -> Result<Agg, LongTermError> {
        let [count, min, max, sum, last, last_s] = self.0;
        let missing =
            || LongTermError::BadAnswer(format!("incomplete rollups for the bucket at {start} ms"));
        let count = count.ok_or_else(missing)?;
        if !(count >= 1.0 && count.fract() == 0.0) {
            return Err(LongTermError::BadAnswer(format!(
                "count {count} for the bucket at {start} ms"
            )));
        }
        let last_s = last_s.ok_or_else(missing)?;
        Ok(Agg {
            count: count as u64,
            min: min.ok_or_else(missing)?,
            max: max.ok_or_else(missing)?,
            sum: sum.ok_or_else(missing)?,
            last: last.ok_or_else(missing)?,
            last_ts: millis(last_s)?,
        })
    }
}

/// Decimal seconds from the API as milliseconds.
fn millis(seconds: f64) -> Result<u64, LongTermError> {
    let ms = (seconds * 1000.0).round();
    if !(0.0..=u64::MAX as f64).contains(&ms) {
        return Err(LongTermError::BadAnswer(format!(
            "timestamp {seconds} s is out of range"
        )));
    }
    Ok(ms as u64)
}

/// Files one answer's values under (series, bucket start).
fn collect(
    request: Request,
    answer: Answer,
    by_series: &mut BTreeMap<(String, u64), Partial>,
) -> Result<(), LongTermError> {
    let Some(data) = answer.data else {
        return Err(LongTermError::BadAnswer("no `data`".into()));
    };
    for mut series in data.result {
        let rollup = series
            .metric
            .remove("rollup")
            .ok_or_else(|| LongTermError::BadAnswer("a series without a `rollup` label".into()))?;
        let slot = ROLLUPS
            .iter()
            .position(|r| *r == rollup)
            .ok_or_else(|| LongTermError::BadAnswer(format!("unasked rollup {rollup:?}")))?;
        let name: String = series
            .metric
            .iter()
            .map(|(k, v)| format!("{k}={v:?},"))
            .collect();
        let points = series.value.into_iter().chain(series.values);
        for (at_s, text) in points {
            let value: f64 = text
                .parse()
                .map_err(|_| LongTermError::BadAnswer(format!("value {text:?} is not a number")))?;
            let start = match request {
                Request::Range { step_ms, .. } => (millis(at_s)? + 1).saturating_sub(step_ms),
                Request::Instant {
                    bucket_start_ms, ..
                } => bucket_start_ms,
            };
            by_series.entry((name.clone(), start)).or_default().0[slot] = Some(value);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from_ms: u64, to_ms: u64) -> TimeRange {
        TimeRange { from_ms, to_ms }
    }

    /// The buckets each plan covers, as `[from, to)` per bucket, so coverage is checked
    /// independently of how the requests are shaped.
    fn covered(requests: &[Request]) -> Vec<(u64, u64)> {
        let mut parts = Vec::new();
        for request in requests {
            match *request {
                Request::Range {
                    first_eval_ms,
                    last_eval_ms,
                    step_ms,
                } => {
                    let mut eval = first_eval_ms;
                    while eval <= last_eval_ms {
                        parts.push((eval + 1 - step_ms, eval + 1));
                        eval += step_ms;
                    }
                }
                Request::Instant {
                    eval_ms, window_ms, ..
                } => parts.push((eval_ms + 1 - window_ms, eval_ms + 1)),
            }
        }
        parts
    }

    #[test]
    fn plans_cover_the_range_exactly_once_in_step_aligned_pieces() {
        for (from, to, step) in [
            (0, 10_000, 1_000),
            (1_500, 10_000, 1_000),
            (1_000, 9_250, 1_000),
            (1_500, 1_700, 1_000),
            (1_000, 2_000, 1_000),
            (999, 1_001, 1_000),
            (123_457, 987_654, 60_000),
            (5, 6, 1),
        ] {
            let requests = plan(range(from, to), step);
            let parts = covered(&requests);
            assert_eq!(
                parts.first().map(|p| p.0),
                Some(from),
                "{from}..{to}/{step}"
            );
            assert_eq!(parts.last().map(|p| p.1), Some(to), "{from}..{to}/{step}");
            for pair in parts.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "contiguous: {parts:?}");
            }
            for (a, b) in &parts {
                assert_eq!(
                    align_down(*a, step),
                    align_down(b - 1, step),
                    "{a}..{b} stays in one bucket of {step}"
                );
            }
            assert!(requests.len() <= 3, "{requests:?}");
        }
    }

    #[test]
    fn an_aligned_range_is_one_range_query() {
        assert_eq!(
            plan(range(60_000, 180_000), 60_000),
            vec![Request::Range {
                first_eval_ms: 119_999,
                last_eval_ms: 179_999,
                step_ms: 60_000
            }]
        );
    }

    fn reader(retention: Retention) -> LongTermReader {
        let mut config = InfluxConfig::new("http://127.0.0.1:8428", "o", "b");
        config.query_url = Some("http://127.0.0.1:8428/".into());
        LongTermReader::new(&config, retention)
            .expect("valid")
            .expect("query_url set")
    }

    #[test]
    fn the_split_falls_on_a_bucket_boundary_after_the_embedded_start() {
        let retention = Retention {
            raw_ms: 1_000,
            rollup_step_ms: 1_000,
            rollup_ms: 10_000,
            max_rows_per_call: 10,
        };
        let reader = reader(retention);
        let now = 100_500;
        assert_eq!(reader.embedded_from_ms(now), 90_000);
        // Step 7 s: the first boundary at or after 90 s is 91 s.
        let split = reader.split(range(50_000, 100_000), 7_000, now);
        assert_eq!(split.long_term, Some(range(50_000, 91_000)));
        assert_eq!(split.embedded, Some(range(91_000, 100_000)));
        // Entirely within the embedded window: no long-term read.
        let split = reader.split(range(95_000, 100_000), 1_000, now);
        assert_eq!(split.long_term, None);
        assert_eq!(split.embedded, Some(range(95_000, 100_000)));
        // Entirely older.
        let split = reader.split(range(10_000, 20_000), 1_000, now);
        assert_eq!(split.long_term, Some(range(10_000, 20_000)));
        assert_eq!(split.embedded, None);
    }

    #[test]
    fn the_selector_quotes_what_it_interpolates() {
        let key = TwinKey {
            lab: "lab-a".parse().expect("id"),
            machine: "lathe-1".parse().expect("id"),
        };
        let metric: MetricName = "spindle.power_w".parse().expect("metric");
        assert_eq!(
            selector("ma\"ch\\ine", &key, &metric),
            r#"{__name__="ma\"ch\\ine_spindle.power_w",lab="lab-a",machine="lathe-1"}"#
        );
    }

    fn answer(json: &str) -> Answer {
        serde_json::from_str(json).expect("answer json")
    }

    #[test]
    fn two_series_of_one_metric_merge_and_the_later_sample_is_last() {
        let request = Request::Range {
            first_eval_ms: 1_999,
            last_eval_ms: 1_999,
            step_ms: 1_000,
        };
        let mut json = String::from(r#"{"status":"success","data":{"result":["#);
        for (gateway, values) in [
            ("gw-1", ["2", "1", "4", "5", "4", "1.9"]),
            ("gw-2", ["1", "0.5", "0.5", "0.5", "0.5", "1.2"]),
        ] {
            for (rollup, value) in ROLLUPS.iter().zip(values) {
                let _ = write!(
                    json,
                    r#"{{"metric":{{"gateway":"{gateway}","rollup":"{rollup}"}},"values":[[1.999,"{value}"]]}},"#
                );
            }
        }
        json.pop();
        json.push_str("]}}");
        let mut by_series = BTreeMap::new();
        collect(request, answer(&json), &mut by_series).expect("collects");
        assert_eq!(by_series.len(), 2);
        let mut merged: Option<Agg> = None;
        for ((_, start), partial) in &by_series {
            assert_eq!(*start, 1_000);
            let agg = partial.finish(*start).expect("complete");
            match &mut merged {
                Some(m) => m.merge(&agg),
                None => merged = Some(agg),
            }
        }
        let bucket = merged.expect("one bucket").bucket(1_000);
        assert_eq!(bucket.count, 3);
        assert_eq!(bucket.min, 0.5);
        assert_eq!(bucket.max, 4.0);
        assert_eq!(bucket.mean, 5.5 / 3.0);
        assert_eq!(
            bucket.last, 4.0,
            "gw-1's sample at 1.9 s is later than gw-2's"
        );
    }

    #[test]
    fn unreadable_answers_name_what_is_wrong() {
        let request = Request::Instant {
            eval_ms: 999,
            window_ms: 1_000,
            bucket_start_ms: 0,
        };
        let mut sink = BTreeMap::new();
        let err = collect(
            request,
            answer(r#"{"status":"success","data":{"result":[{"metric":{},"value":[0.999,"1"]}]}}"#),
            &mut sink,
        )
        .expect_err("no rollup label");
        assert!(err.to_string().contains("rollup"), "{err}");
        let err = collect(
            request,
            answer(r#"{"status":"success","data":{"result":[{"metric":{"rollup":"count_over_time"},"value":[0.999,"many"]}]}}"#),
            &mut sink,
        )
        .expect_err("not a number");
        assert!(err.to_string().contains("\"many\""), "{err}");
        let mut partial = Partial::default();
        partial.0[0] = Some(2.0);
        let err = partial.finish(0).expect_err("only a count");
        assert!(err.to_string().contains("incomplete"), "{err}");
        partial.0 = [
            Some(0.5),
            Some(1.0),
            Some(1.0),
            Some(1.0),
            Some(1.0),
            Some(1.0),
        ];
        let err = partial.finish(0).expect_err("fractional count");
        assert!(err.to_string().contains("count 0.5"), "{err}");
    }
}
