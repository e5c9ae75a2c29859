//! Bulk import, streamed: customers and events as CSV, and the CDNOW order history.
//!
//! Rows are read one at a time from any async reader (an HTTP body or a file) and
//! committed in chunks of [`CHUNK`] rows. A bad row is reported with its line
//! number and skipped; good rows are kept. Events go through the same pipeline as
//! the API, so plugins see imported history as it arrives.

use super::customers::{validate_customer, CustomerInput};
use super::CrmError;
use crate::domain::time::parse_time;
use crate::domain::{self, time::Clock, EventRecord};
use crate::packs::Packs;
use crate::pipeline::{self, EventInput, EventJob, PipelineError};
use crate::store::{self, NewCustomer, Store, StoreError};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Rows per transaction.
pub const CHUNK: usize = 500;
/// Row errors listed in a report; the count covers them all.
pub const MAX_LISTED_ERRORS: usize = 1000;

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Data rows read (the header is not a row).
    pub rows: u64,
    /// Rows stored now.
    pub imported: u64,
    /// Rows already stored by an earlier import (same idempotency key or id).
    pub already_present: u64,
    /// Events whose plugins failed (the event was still stored).
    pub plugin_failures: u64,
    pub error_count: u64,
    pub errors: Vec<RowError>,
    /// The input could not be read on (a row over [`MAX_ROW`] bytes, a broken
    /// stream): the rows before are kept, the error says where it stopped.
    #[serde(skip)]
    stopped: bool,
}

/// A row that was not imported, and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RowError {
    /// 1-based line in the input (the header is line 1).
    pub line: u64,
    pub message: String,
}

impl ImportReport {
    /// Counts a CSV row and gives its physical line (blank lines are skipped and
    /// quoted cells may span lines); a malformed row is reported and skipped.
    fn take_row(
        &mut self,
        rec: Result<csv_async::StringRecord, csv_async::Error>,
    ) -> Option<(u64, csv_async::StringRecord)> {
        self.rows += 1;
        let fallback = self.rows + 1;
        match rec {
            Ok(r) => Some((r.position().map_or(fallback, |p| p.line()), r)),
            Err(e) => {
                let line = e.position().map_or(fallback, |p| p.line());
                if let csv_async::ErrorKind::Io(io) = e.kind() {
                    self.stopped = true;
                    self.error(line, format!("the import stopped here: {io}"));
                } else {
                    self.error(line, format!("malformed CSV: {e}"));
                }
                None
            }
        }
    }

    fn error(&mut self, line: u64, message: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(RowError { line, message });
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the CSV header is unusable: {0}")]
    Header(String),
    /// A parameter of the import itself (its `now`).
    #[error("{0}")]
    Invalid(String),
    #[error("the input could not be read: {0}")]
    Read(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the import failed inside the host: {0}")]
    Internal(String),
}

/// The longest row (CSV record, or CDNOW line) an import reads.
pub const MAX_ROW: usize = 1 << 20;

/// Passes an input through, but never lets one row grow past [`MAX_ROW`] bytes:
/// the CSV reader and `lines()` hold a whole row in memory, so one enormous row
/// (a gigabyte without a line break) would be held whole. When a row goes over,
/// the bytes of the rows before it are handed on, then an `InvalidData` error
/// naming the line, then nothing more. With `quotes`, line breaks inside a quoted
/// CSV cell do not end a row.
struct RowLimit<R> {
    inner: R,
    quotes: bool,
    in_quotes: bool,
    /// Bytes of the current row so far, and its first line (1-based).
    row: usize,
    line: u64,
    row_line: u64,
    /// Set once a row went over: the error to give, then end of input.
    over: Option<Option<String>>,
}

impl<R> RowLimit<R> {
    fn new(inner: R, quotes: bool) -> Self {
        RowLimit {
            inner,
            quotes,
            in_quotes: false,
            row: 0,
            line: 1,
            row_line: 1,
            over: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for RowLimit<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(pending) = &mut this.over {
            return Poll::Ready(match pending.take() {
                Some(m) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, m)),
                None => Ok(()),
            });
        }
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let mut row_start = 0;
        let new = &buf.filled()[before..];
        for (i, &b) in new.iter().enumerate() {
            if this.quotes && b == b'"' {
                this.in_quotes = !this.in_quotes;
            }
            if b == b'\n' {
                this.line += 1;
                if !this.in_quotes {
                    this.row = 0;
                    this.row_line = this.line;
                    row_start = i + 1;
                    continue;
                }
            }
            this.row += 1;
            if this.row > MAX_ROW {
                let message = format!(
                    "the row at line {} is longer than {MAX_ROW} bytes",
                    this.row_line
                );
                buf.set_filled(before + row_start);
                return Poll::Ready(if row_start == 0 {
                    this.over = Some(None);
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        message,
                    ))
                } else {
                    this.over = Some(Some(message));
                    Ok(())
                });
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A CSV cell as a field value: a number, `true`/`false`, or text.
fn cell_value(s: &str) -> Json {
    if let Ok(n) = s.parse::<f64>() {
        if n.is_finite() {
            return serde_json::json!(n);
        }
    }
    match s {
        "true" => Json::Bool(true),
        "false" => Json::Bool(false),
        _ => Json::String(s.to_string()),
    }
}

fn row_error(e: &CrmError) -> Option<String> {
    match e {
        CrmError::Pipeline(PipelineError::Store(_))
        | CrmError::Store(_)
        | CrmError::Internal(_) => None,
        other => Some(other.to_string()),
    }
}

/// A customer from a CSV row: `id` (required), `name`, `source`, `owner` (the
/// agent who looks after them), `created_at`, `tags` (separated by `;`); every
/// other column is a field. Not yet validated
/// (the store's rules apply when it is built, as for the API).
pub fn customer_from_row(
    headers: &csv_async::StringRecord,
    rec: &csv_async::StringRecord,
) -> Result<CustomerInput, String> {
    let mut input = CustomerInput::default();
    let mut bad = None;
    for (h, v) in headers.iter().zip(rec.iter()) {
        if v.is_empty() {
            continue;
        }
        match h {
            "id" => input.id = Some(v.to_string()),
            "name" => input.name = Some(v.to_string()),
            "source" => input.source = Some(v.to_string()),
            "owner" => input.owner = Some(v.to_string()),
            "created_at" => match parse_time(v) {
                Some(t) => input.created_at = Some(t),
                None => bad = Some(format!("created_at {v:?} is not a time")),
            },
            "tags" => input.tags = v.split(';').map(|t| t.trim().to_string()).collect(),
            key => {
                input.fields.insert(key.to_string(), cell_value(v));
            }
        }
    }
    if rec.len() != headers.len() {
        bad = Some(format!("{} cells for {} columns", rec.len(), headers.len()));
    }
    if input.id.is_none() {
        bad = Some("id is empty".into());
    }
    match bad {
        Some(m) => Err(m),
        None => Ok(input),
    }
}

/// An event from a CSV row: the customer id, the idempotency key and the event.
pub fn event_from_row(
    headers: &csv_async::StringRecord,
    rec: &csv_async::StringRecord,
) -> Result<(String, Option<String>, EventInput), String> {
    if rec.len() != headers.len() {
        return Err(format!("{} cells for {} columns", rec.len(), headers.len()));
    }
    let mut customer = String::new();
    let mut key = None;
    let mut ev = EventInput::default();
    let mut bad = None;
    for (h, v) in headers.iter().zip(rec.iter()) {
        if v.is_empty() {
            continue;
        }
        match h {
            "customer_id" => customer = v.to_string(),
            "kind" => ev.kind = v.to_string(),
            "channel" => ev.channel = Some(v.to_string()),
            "idempotency_key" => key = Some(v.to_string()),
            "at" => match parse_time(v) {
                Some(t) => ev.at = Some(t),
                None => bad = Some(format!("at {v:?} is not a time")),
            },
            "amount_cents" => match v.parse::<i64>() {
                Ok(a) => ev.amount_cents = Some(a),
                Err(_) => bad = Some(format!("amount_cents {v:?} is not a whole number")),
            },
            "amount" => match v.parse::<f64>() {
                Ok(a) if a.is_finite() => ev.amount_cents = Some((a * 100.0).round() as i64),
                _ => bad = Some(format!("amount {v:?} is not a number")),
            },
            k => {
                ev.fields.insert(k.to_string(), cell_value(v));
            }
        }
    }
    if customer.is_empty() {
        bad = bad.or(Some("customer_id is empty".into()));
    }
    match bad {
        Some(m) => Err(m),
        None => Ok((customer, key, ev)),
    }
}

/// A CDNOW order line's columns: customer id, time, CDs, cents.
pub fn cdnow_order(cols: &[&str]) -> Result<(String, i64, u32, i64), String> {
    let [id, date, cds, dollars] = cols else {
        return Err(format!("{} columns, expected 4", cols.len()));
    };
    let at = parse_time(date)
        .filter(|_| date.len() == 8)
        .ok_or(format!("date {date:?} is not YYYYMMDD"))?;
    let cds: u32 = cds
        .parse()
        .map_err(|_| format!("number of CDs {cds:?} is not a whole number"))?;
    let dollars: f64 = dollars
        .parse()
        .ok()
        .filter(|d: &f64| d.is_finite() && *d >= 0.0)
        .ok_or(format!("dollar value {dollars:?} is not a number"))?;
    Ok((id.to_string(), at, cds, (dollars * 100.0).round() as i64))
}

/// Everything the importers do to an input short of storing it: CSV parsing,
/// row mapping and the same validation as the API, for each of the three
/// formats (the first byte picks one). The fuzz target (`fuzz/`) calls this, and
/// `tests/import_regressions.rs` replays what it found. Returns the rows accepted.
#[cfg(any(test, feature = "test-support"))]
pub fn check_without_storing(data: &[u8]) -> usize {
    let Some((&which, body)) = data.split_first() else {
        return 0;
    };
    let now = 1_900_000_000_000; // 2030: the seeds are in the past
                                 // Rows of a CSV body that `accept` takes.
    let csv_rows = |accept: &dyn Fn(&csv_async::StringRecord, &csv_async::StringRecord) -> bool| {
        futures::executor::block_on(async {
            let mut rdr = csv_reader(body);
            let Ok(headers) = rdr.headers().await.cloned() else {
                return 0;
            };
            let mut ok = 0;
            let mut records = rdr.records();
            while let Some(rec) = records.next().await {
                if let Ok(rec) = rec {
                    ok += usize::from(accept(&headers, &rec));
                }
            }
            ok
        })
    };
    match which % 3 {
        0 => csv_rows(&|h, r| {
            customer_from_row(h, r).is_ok_and(|input| validate_customer(input, now).is_ok())
        }),
        1 => {
            csv_rows(&|h, r| event_from_row(h, r).is_ok_and(|(_, _, ev)| ev.validate(now).is_ok()))
        }
        _ => String::from_utf8_lossy(body)
            .lines()
            .filter(|l| cdnow_order(&l.split_whitespace().collect::<Vec<_>>()).is_ok())
            .count(),
    }
}

fn csv_reader<R: AsyncRead + Unpin + Send>(r: R) -> csv_async::AsyncReader<R> {
    csv_async::AsyncReaderBuilder::new()
        .flexible(true)
        .trim(csv_async::Trim::All)
        .create_reader(r)
}

/// Bulk imports of customers and events, committed a chunk at a time.
#[derive(Clone, Debug)]
pub struct Imports {
    store: Store,
    packs: Packs,
    /// The one clock (see [`Clock`]).
    clock: Clock,
}

impl Imports {
    pub(crate) fn new(store: Store, packs: Packs, clock: Clock) -> Imports {
        Imports {
            store,
            packs,
            clock,
        }
    }
    /// Imports customers from CSV: columns `id` (required), `name`, `source`,
    /// `created_at`, `tags` (separated by `;`); every other column is a field.
    pub async fn import_customers<R: AsyncRead + Unpin + Send>(
        &self,
        tenant: &str,
        input: R,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ImportReport, ImportError> {
        let mut rdr = csv_reader(RowLimit::new(input, true));
        let headers = rdr
            .headers()
            .await
            .map_err(|e| ImportError::Header(e.to_string()))?
            .clone();
        if !headers.iter().any(|h| h == "id") {
            return Err(ImportError::Header("no id column".into()));
        }
        let mut report = ImportReport::default();
        let mut records = rdr.records();
        let mut tx = self.store.begin().await?;
        let mut in_chunk = 0;
        while let Some(rec) = records.next().await {
            let Some((line, rec)) = report.take_row(rec) else {
                if report.stopped {
                    break;
                }
                continue;
            };
            let input = match customer_from_row(&headers, &rec) {
                Ok(i) => i,
                Err(m) => {
                    report.error(line, m);
                    continue;
                }
            };
            match self.customer_row(&mut tx, tenant, input).await {
                Ok(true) => report.imported += 1,
                Ok(false) => report.already_present += 1,
                Err(e) => match row_error(&e) {
                    Some(m) => report.error(line, m),
                    None => return Err(fatal(e)),
                },
            }
            in_chunk += 1;
            if in_chunk == CHUNK {
                tx.commit().await?;
                tx = self.store.begin().await?;
                in_chunk = 0;
                progress(report.rows);
            }
        }
        tx.commit().await?;
        progress(report.rows);
        Ok(report)
    }

    /// One customer row inside the import's transaction: `false` if it exists.
    async fn customer_row(
        &self,
        tx: &mut store::Tx,
        tenant: &str,
        input: CustomerInput,
    ) -> Result<bool, CrmError> {
        let c: NewCustomer = self.new_customer(input)?;
        if store::customer_exists(tx.conn(), tenant, &c.id).await? {
            return Ok(false);
        }
        super::customers::insert_customer(tx, tenant, &c).await?;
        Ok(true)
    }

    /// Imports events from CSV: columns `customer_id`, `kind` (required), `channel`,
    /// `at`, `amount_cents` or `amount` (in currency units), `idempotency_key`;
    /// every other column is a field of the event.
    pub async fn import_events<R: AsyncRead + Unpin + Send>(
        &self,
        tenant: &str,
        input: R,
        now: Option<i64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ImportReport, ImportError> {
        let mut rdr = csv_reader(RowLimit::new(input, true));
        let headers = rdr
            .headers()
            .await
            .map_err(|e| ImportError::Header(e.to_string()))?
            .clone();
        for need in ["customer_id", "kind"] {
            if !headers.iter().any(|h| h == need) {
                return Err(ImportError::Header(format!("no {need} column")));
            }
        }
        let mut report = ImportReport::default();
        let mut records = rdr.records();
        let mut batch = EventBatch::new(self, tenant, now).await?;
        while let Some(rec) = records.next().await {
            let Some((line, rec)) = report.take_row(rec) else {
                if report.stopped {
                    break;
                }
                continue;
            };
            let (customer, key, ev) = match event_from_row(&headers, &rec) {
                Ok(r) => r,
                Err(m) => {
                    report.error(line, m);
                    continue;
                }
            };
            batch
                .push(&mut report, line, &customer, None, &ev, key.as_deref())
                .await?;
            if batch.rows == CHUNK {
                batch.commit().await?;
                progress(report.rows);
            }
        }
        batch.finish().await?;
        progress(report.rows);
        Ok(report)
    }

    /// Imports the CDNOW order history (`customer_id date cds dollars` per line,
    /// whitespace-separated, an optional header). Customers are created on their
    /// first order with source `cdnow`; each line is an order on channel `web` with
    /// the number of CDs as a field. Lines are keyed `cdnow:<line>`, so importing
    /// the same file again adds nothing.
    pub async fn import_cdnow<R: AsyncRead + Unpin + Send>(
        &self,
        tenant: &str,
        input: R,
        now: Option<i64>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ImportReport, ImportError> {
        let mut lines = BufReader::new(RowLimit::new(input, false)).lines();
        let mut report = ImportReport::default();
        let mut batch = EventBatch::new(self, tenant, now).await?;
        let mut line_no = 0u64;
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                // A line over the bound: reported, and the import stops there
                // with the lines before it kept.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    report.rows += 1;
                    report.error(line_no + 1, e.to_string());
                    break;
                }
                Err(e) => return Err(ImportError::Read(e.to_string())),
            };
            line_no += 1;
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.is_empty() || (line_no == 1 && cols[0] == "customer_id") {
                continue;
            }
            report.rows += 1;
            let parsed = cdnow_order(&cols);
            let (id, at, cds, cents) = match parsed {
                Ok(p) => p,
                Err(m) => {
                    report.error(line_no, m);
                    continue;
                }
            };
            let ev = EventInput {
                kind: "order".into(),
                channel: Some("web".into()),
                at: Some(at),
                amount_cents: Some(cents),
                fields: BTreeMap::from([("cds".to_string(), serde_json::json!(cds))]),
            };
            let key = format!("cdnow:{line_no}");
            let create = NewCustomer {
                id: id.clone(),
                source: Some("cdnow".into()),
                created_at: at,
                ..Default::default()
            };
            batch
                .push(&mut report, line_no, &id, Some(create), &ev, Some(&key))
                .await?;
            if batch.rows == CHUNK {
                batch.commit().await?;
                progress(report.rows);
            }
        }
        batch.finish().await?;
        progress(report.rows);
        Ok(report)
    }

    fn new_customer(&self, input: CustomerInput) -> Result<NewCustomer, CrmError> {
        // The same checks as the API, by building through the same path.
        validate_customer(input, self.clock.now())
    }
}

/// An error that ends an import: the store's, or a fault of the host (a task
/// that panicked), reported as such and never as corrupt data.
fn fatal(e: CrmError) -> ImportError {
    match e {
        CrmError::Store(s) | CrmError::Pipeline(PipelineError::Store(s)) => ImportError::Store(s),
        other => ImportError::Internal(other.to_string()),
    }
}

/// Events committed a chunk at a time.
struct EventBatch<'a> {
    imports: &'a Imports,
    tenant: &'a str,
    now: Option<i64>,
    tx: Option<store::Tx>,
    rows: usize,
}

impl<'a> EventBatch<'a> {
    async fn new(
        imports: &'a Imports,
        tenant: &'a str,
        now: Option<i64>,
    ) -> Result<Self, ImportError> {
        if let Some(n) = now {
            crate::domain::time::check_as_of(n).map_err(ImportError::Invalid)?;
        }
        Ok(EventBatch {
            imports,
            tenant,
            now,
            tx: Some(imports.store.begin().await?),
            rows: 0,
        })
    }

    /// Records one event (creating its customer first if `create` is given and it
    /// does not exist). Row problems go into the report.
    async fn push(
        &mut self,
        report: &mut ImportReport,
        line: u64,
        customer: &str,
        create: Option<NewCustomer>,
        ev: &EventInput,
        key: Option<&str>,
    ) -> Result<(), ImportError> {
        let wall = self.imports.clock.now();
        let event: EventRecord = match ev.validate(wall) {
            Ok(e) => e,
            Err(e) => {
                report.error(line, e.to_string());
                return Ok(());
            }
        };
        if let Some(Err(e)) = key.map(domain::check_idempotency_key) {
            report.error(line, e);
            return Ok(());
        }
        let tx = self.tx.as_mut().expect("open transaction");
        if let Some(c) = create {
            if !domain::is_customer_id(&c.id) {
                report.error(line, format!("customer id {:?} is not valid", c.id));
                return Ok(());
            }
            if !store::customer_exists(tx.conn(), self.tenant, &c.id).await? {
                super::customers::insert_customer(tx, self.tenant, &c).await?;
            }
        }
        let packs = self.imports.packs.for_tenant(self.tenant);
        // History is evaluated at each event's own time (so what it causes,
        // follow-ups and wakes, lands where it belongs in that history) unless
        // the import names a `now`.
        let now = self.now.map_or(event.at, |n| n.max(event.at));
        let job = EventJob::new(packs, self.tenant, customer, event, key, now);
        match pipeline::record_one(tx, &job).await {
            Ok(o) if o.replayed => report.already_present += 1,
            Ok(o) => {
                report.imported += 1;
                report.plugin_failures += (!o.failures.is_empty()) as u64;
            }
            Err(PipelineError::Store(e)) => return Err(e.into()),
            Err(e) => report.error(line, e.to_string()),
        }
        self.rows += 1;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), ImportError> {
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        self.tx = Some(self.imports.store.begin().await?);
        self.rows = 0;
        Ok(())
    }

    async fn finish(mut self) -> Result<(), ImportError> {
        if let Some(tx) = self.tx.take() {
            tx.commit().await?;
        }
        Ok(())
    }
}
