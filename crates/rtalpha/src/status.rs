//! `rtalpha status`: the registry's view as a table.

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rtalpha_proto::registry::{AppsView, RegistryStatus};

/// Where to ask.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The registry's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8761", env = "RTALPHA_REGISTRY_URL")]
    registry: String,
}

async fn fetch<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> anyhow::Result<T> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("`{base}` is not a URL"))?;
    let response = client
        .get(uri.clone())
        .await
        .with_context(|| format!("cannot reach the registry at {base}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    if !status.is_success() {
        bail!("{uri} answered {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("{uri} did not answer the registry's JSON"))
}

/// Prints the table.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let apps: AppsView = fetch(&args.registry, "/v1/apps").await?;
    let status: RegistryStatus = fetch(&args.registry, "/v1/status").await?;
    print!("{}", render(&apps, &status));
    Ok(())
}

fn render(apps: &AppsView, status: &RegistryStatus) -> String {
    let mut rows = vec![[
        "APP".to_owned(),
        "INSTANCE".to_owned(),
        "ADDRESS".to_owned(),
        "STATUS".to_owned(),
        "ZONE".to_owned(),
    ]];
    for app in &apps.apps {
        for instance in &app.instances {
            rows.push([
                app.name.clone(),
                instance.instance_id.clone(),
                format!("{}:{}", instance.host_name, instance.port.number),
                instance.status.to_string(),
                instance.zone.clone().unwrap_or_else(|| "-".to_owned()),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|col| rows.iter().map(|row| row[col].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let preservation = if status.self_preservation.active {
        "ENGAGED (eviction suspended)"
    } else if status.self_preservation.enabled {
        "standing by"
    } else {
        "disabled"
    };
    out.push_str(&format!(
        "\n{} apps, {} instances, index {}, self-preservation {}\n",
        status.apps, status.instances, status.index, preservation
    ));
    out
}
