//! The dashboard at `/`: server-rendered HTML that reloads itself.

use std::fmt::Write;

use axum::Router;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;

use crate::api::registry_status;
use crate::server::AppState;

/// The `/` route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/", get(page))
}

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn age(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{}s", secs / 60, secs % 60),
        _ => format!("{}h{}m", secs / 3600, (secs % 3600) / 60),
    }
}

async fn page(State(state): State<AppState>) -> Html<String> {
    let status = registry_status(&state);
    let now = state.table.clock().now_ms();
    let refresh = state.settings.dashboard_refresh.as_secs().max(1);
    let preservation = &status.self_preservation;
    let mode = match (preservation.enabled, preservation.active) {
        (false, _) => "disabled",
        (true, true) => "ENGAGED: eviction suspended",
        (true, false) => "standing by",
    };
    let mut html = String::with_capacity(8192);
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{refresh}\">\
         <title>rtalpha registry</title><style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
         .UP{{color:#060}}.DOWN{{color:#a00}}.OUT_OF_SERVICE{{color:#a60}}.engaged{{background:#fdd}}</style></head><body>\
         <h1>rtalpha registry</h1><p>index {} · {} apps · {} instances · up for {} · {} evicted</p>\
         <p class=\"{}\">self-preservation: {} ({} renewals in the last {} s, {:.0} expected, threshold {:.0}%)</p>",
        status.index,
        status.apps,
        status.instances,
        age(now, status.started_at),
        status.evictions_total,
        if preservation.active { "engaged" } else { "" },
        mode,
        preservation.renewals_in_window,
        preservation.window_secs,
        preservation.expected_renewals,
        preservation.threshold_share * 100.0,
    );
    if let Some(cluster) = &status.cluster {
        let _ = write!(
            html,
            "<h2>cluster</h2><p>node {}{}</p><table><tr><th>peer</th><th>node</th><th>reachable</th><th>backlog</th>\
             <th>lag</th><th>last success</th><th>resync</th><th>last error</th></tr>",
            escape(&cluster.node_id),
            if cluster.warming_up {
                " · warming up (no eviction)"
            } else {
                ""
            },
        );
        for peer in &cluster.peers {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{} ms</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&peer.url),
                escape(peer.node_id.as_deref().unwrap_or("-")),
                if peer.reachable { "UP" } else { "DOWN" },
                if peer.reachable { "yes" } else { "no" },
                peer.backlog,
                peer.lag_ms,
                if peer.last_success == 0 {
                    "never".to_owned()
                } else {
                    format!("{} ago", age(now, peer.last_success))
                },
                if peer.resync_pending { "pending" } else { "-" },
                escape(peer.last_error.as_deref().unwrap_or("-")),
            );
        }
        html.push_str("</table><h2>instances</h2>");
    }
    html.push_str("<table><tr><th>app</th><th>instance</th><th>address</th><th>status</th><th>zone</th><th>lease age</th><th>last renewal</th></tr>");
    let view = state.table.read();
    for (app, instances) in view.apps() {
        for instance in instances {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}:{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{} ago</td></tr>",
                escape(app),
                escape(&instance.instance_id),
                escape(&instance.host_name),
                instance.port.number,
                instance.status.as_str(),
                instance.status.as_str(),
                escape(instance.zone.as_deref().unwrap_or("-")),
                age(now, instance.lease.registration_timestamp),
                age(now, instance.lease.last_renewal_timestamp),
            );
        }
    }
    html.push_str("</table></body></html>");
    Html(html)
}
