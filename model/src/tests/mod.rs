//! Tests of the manifest layer: parsing and its errors, canonical form, output, and properties.

mod canonical;
mod config;
mod output;
mod parse;
mod props;
mod service;

use super::*;

/// Parses `text` as `deploy.yaml`, expecting success.
fn ok(text: &str) -> Vec<Resource> {
    match parse("deploy.yaml", text.as_bytes()) {
        Ok(r) => r,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

/// Parses `text` as `deploy.yaml`, expecting errors; returns them displayed, one per line.
fn errors(text: &str) -> Vec<String> {
    match parse("deploy.yaml", text.as_bytes()) {
        Ok(r) => panic!("expected errors, parsed {r:#?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The one Deployment in `text`.
fn deployment(text: &str) -> Deployment {
    match ok(text).as_slice() {
        [Resource::Deployment(d)] => d.clone(),
        other => panic!("expected one Deployment, got {other:#?}"),
    }
}

/// A minimal valid Deployment with `extra` spliced into the container (indented to fit).
fn with_container(extra: &str) -> String {
    let extra: String = extra.lines().map(|l| format!("        {l}\n")).collect();
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx:1.27
{extra}"
    )
}

const NGINX: &str = include_str!("../testdata/nginx.yaml");
const WORKER: &str = include_str!("../testdata/worker.yaml");
const MULTI: &str = include_str!("../testdata/multi.yaml");
const EXPORTED: &str = include_str!("../testdata/exported.yaml");
const EXPORTED_SERVICE: &str = include_str!("../testdata/exported-service.yaml");
const TUTORIAL: &str = include_str!("../testdata/tutorial.yaml");
