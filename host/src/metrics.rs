//! Prometheus metrics, one registry per service (no process globals, so tests and
//! several services in one process each count their own). `GET /metrics` renders it.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by matched route, method and status.
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    /// Plugin runs (one per plugin per event) by plugin, version and outcome:
    /// `ok`, `trap`, `deadline`, `memory`, `bad_output`, `plugin_error`, `busy`, `runtime`.
    pub plugin_calls: IntCounterVec,
    pub plugin_seconds: HistogramVec,
    /// Events stored (with or without plugin failures).
    pub events: IntCounter,
    /// Versions the circuit breaker took out of service.
    pub suspensions: IntCounterVec,
    /// Customers processed by jobs, by kind.
    pub job_customers: IntCounterVec,
    /// Wakes fired by this host (contract 0.2.0 timers).
    pub wakes_fired: IntCounter,
    /// Webhook delivery attempts by this host, by outcome: `delivered`,
    /// `failed` (to be retried), `dead`.
    pub webhook_deliveries: IntCounterVec,
    pub webhook_seconds: HistogramVec,
    /// Deliveries waiting (all hosts), and the age of the oldest, as this host
    /// last read them.
    pub webhook_queue: IntGauge,
    pub webhook_oldest_seconds: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("metric definition");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let events = IntCounter::new("stagecraft_events_ingested_total", "Events stored")
            .expect("metric definition");
        registry
            .register(Box::new(events.clone()))
            .expect("unique metric");
        let wakes_fired = IntCounter::new(
            "stagecraft_wakes_fired_total",
            "Wakes (plugin timers) fired by this host",
        )
        .expect("metric definition");
        registry
            .register(Box::new(wakes_fired.clone()))
            .expect("unique metric");
        let webhook_queue = IntGauge::new(
            "stagecraft_webhook_queue_depth",
            "Webhook deliveries waiting to be sent (every host's)",
        )
        .expect("metric definition");
        registry
            .register(Box::new(webhook_queue.clone()))
            .expect("unique metric");
        let webhook_oldest_seconds = Gauge::new(
            "stagecraft_webhook_oldest_undelivered_seconds",
            "Age of the oldest webhook delivery still waiting",
        )
        .expect("metric definition");
        registry
            .register(Box::new(webhook_oldest_seconds.clone()))
            .expect("unique metric");
        Metrics {
            wakes_fired,
            webhook_queue,
            webhook_oldest_seconds,
            webhook_deliveries: counter(
                "stagecraft_webhook_deliveries_total",
                "Webhook delivery attempts by outcome",
                &["outcome"],
            ),
            webhook_seconds: histogram(
                "stagecraft_webhook_delivery_seconds",
                "Time one webhook delivery attempt took",
                &[],
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            http_requests: counter(
                "stagecraft_http_requests_total",
                "HTTP requests by route, method and status",
                &["route", "method", "status"],
            ),
            http_seconds: histogram(
                "stagecraft_http_request_seconds",
                "HTTP request latency by route",
                &["route"],
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            plugin_calls: counter(
                "stagecraft_plugin_calls_total",
                "Plugin runs by plugin, version and outcome",
                &["plugin", "version", "outcome"],
            ),
            plugin_seconds: histogram(
                "stagecraft_plugin_call_seconds",
                "Time one plugin takes for one event (instance, on-event, score, segment)",
                &["plugin", "version"],
                vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 2.5,
                ],
            ),
            events,
            suspensions: counter(
                "stagecraft_plugin_suspensions_total",
                "Versions suspended by the circuit breaker",
                &["plugin", "version"],
            ),
            job_customers: counter(
                "stagecraft_job_customers_total",
                "Customers processed by jobs",
                &["kind"],
            ),
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the exposition is UTF-8")
    }
}
