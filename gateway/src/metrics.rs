//! `/metrics` in the Prometheus text format. Labels are route prefixes, statuses and fixed reasons,
//! never raw paths or users, so that the number of series stays bounded.

use std::sync::Arc;
use std::time::Duration;

use common::ApiError;
use common::server::{Exchange, Observer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::routes::Route;

/// How long an upstream took to answer with its head; put on the response by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamLatency(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<String>,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: Arc<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    logins: Family<OutcomeLabels, Counter>,
    upstream_latency: LatencyFamily,
    in_flight: Gauge,
    /// Route prefixes and the gateway's own paths, longest first: the only route labels there are.
    labels: Vec<(String, Arc<String>)>,
    unmatched: Arc<String>,
}

impl Metrics {
    pub fn new(routes: &[Route]) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let requests = Family::default();
        registry.register(
            "requests",
            "Requests answered, by route prefix and status",
            requests.clone(),
        );
        let auth_failures = Family::default();
        registry.register(
            "auth_failures",
            "Requests to a route refused for their session: missing, invalid, expired or revoked",
            auth_failures.clone(),
        );
        let logins = Family::default();
        registry.register("logins", "Login attempts by outcome", logins.clone());
        let upstream_latency: LatencyFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register(
            "upstream_latency_seconds",
            "Time until an upstream answered with its head, by route prefix",
            upstream_latency.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            in_flight.clone(),
        );

        let mut labels: Vec<(String, Arc<String>)> = routes
            .iter()
            .map(|route| route.prefix.clone())
            .chain(
                crate::routes::RESERVED
                    .iter()
                    .map(|path| (*path).to_owned()),
            )
            .map(|prefix| (prefix.clone(), Arc::new(prefix)))
            .collect();
        labels.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            registry,
            requests,
            auth_failures,
            logins,
            upstream_latency,
            in_flight,
            labels,
            unmatched: Arc::new("unmatched".to_owned()),
        }
    }

    /// The exposition, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            log::error!("cannot encode metrics: {error}");
        }
        text
    }

    fn route_label(&self, path: &str) -> Arc<String> {
        self.labels
            .iter()
            .find(|(prefix, _)| crate::routes::is_at_or_below(path, prefix))
            .map_or_else(
                || Arc::clone(&self.unmatched),
                |(_, label)| Arc::clone(label),
            )
    }
}

impl Observer for Metrics {
    fn started(&self) {
        self.in_flight.inc();
    }

    fn ended(&self) {
        self.in_flight.dec();
    }

    fn finished(&self, exchange: &Exchange<'_>) {
        let route = self.route_label(exchange.path);
        let status = exchange.response.status().as_u16();
        self.requests
            .get_or_create(&RequestLabels {
                route: Arc::clone(&route),
                status,
            })
            .inc();
        let extensions = exchange.response.extensions();
        if let Some(ApiError::Unauthorized(reason)) = extensions.get::<ApiError>() {
            self.auth_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
        }
        if let Some(UpstreamLatency(latency)) = extensions.get::<UpstreamLatency>() {
            self.upstream_latency
                .get_or_create(&RouteLabels { route })
                .observe(latency.as_secs_f64());
        }
        if exchange.path == "/login" && exchange.method == warp::http::Method::POST {
            let outcome = match status {
                200 => "success",
                401 => "invalid_credentials",
                429 => "throttled",
                _ => "bad_request",
            };
            self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
        }
    }
}
