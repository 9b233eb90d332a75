//! `shoal apply -f`: parse every manifest, then send the objects to the agent, in one request
//! when they fit the agent's request limit (written at once), else in parts under it.
//!
//! Parts: objects keep their order, Namespaces first, and fill parts up to the agent's limit
//! (`GET /api/v1/limits`). A part that holds objects of a namespace this apply creates
//! elsewhere carries that Namespace too (applied again, it is `unchanged`), so that every part
//! passes the agent's namespace check on its own. Every part is first sent as a dry run: if
//! the agent refuses any, nothing is written. Then the parts are written one after the other,
//! each at once; a part refused then (the cluster changed in between) leaves the parts before
//! it applied, and the error says which.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::bail;
use serde_json::{Value, json};

use super::{ApiArgs, Client};
use crate::api::limits::{BodyLimits, REQUEST_OVERHEAD, human_bytes};
use crate::manifest::{self, Kind, ParseOptions, ResourceKey};

/// One request of an apply in parts: indexes of the objects it applies (`own`), and of the
/// Namespaces it carries for them (`extra`, applied by another part).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Part {
    pub(crate) own: Vec<usize>,
    pub(crate) extra: Vec<usize>,
}

/// Splits objects (their keys and sizes in bytes, Namespaces first) into parts of at most
/// `budget` bytes each. An object alone over the budget gets a part of its own (the caller
/// refuses such objects first).
pub(crate) fn parts(objects: &[(ResourceKey, usize)], budget: usize) -> Vec<Part> {
    // The Namespaces this apply creates, by name.
    let created: BTreeMap<&str, usize> = objects
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k.kind == Kind::Namespace)
        .map(|(i, (k, _))| (k.name.as_str(), i))
        .collect();
    let mut out: Vec<Part> = Vec::new();
    let mut part = Part::default();
    let mut size = 0;
    let mut present: BTreeSet<usize> = BTreeSet::new();
    for (i, (key, bytes)) in objects.iter().enumerate() {
        let needs = created
            .get(key.namespace.as_str())
            .copied()
            .filter(|&ns| key.kind.is_namespaced() && ns != i);
        let extra_of = |present: &BTreeSet<usize>| {
            needs
                .filter(|ns| !present.contains(ns))
                .map_or(0, |ns| objects[ns].1)
        };
        if !part.own.is_empty() && size + bytes + extra_of(&present) > budget {
            out.push(std::mem::take(&mut part));
            size = 0;
            present.clear();
        }
        if let Some(ns) = needs.filter(|ns| !present.contains(ns)) {
            part.extra.push(ns);
            present.insert(ns);
            size += objects[ns].1;
        }
        part.own.push(i);
        present.insert(i);
        size += bytes;
    }
    if !part.own.is_empty() {
        out.push(part);
    }
    out
}

/// `shoal apply -f ...`.
pub(crate) fn apply(
    api: &ApiArgs,
    files: &[PathBuf],
    namespace: Option<String>,
    recursive: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let options = ParseOptions {
        namespace,
        recursive,
        ..ParseOptions::default()
    };
    let mut resources = match manifest::parse_paths(files, &options, &mut std::io::stdin()) {
        Ok(r) => r,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("error: {e}");
            }
            bail!(
                "nothing was applied ({})",
                super::workloads::problems(errors.len())
            );
        }
    };
    if resources.is_empty() {
        bail!("no objects passed to apply");
    }
    resources.sort_by_key(|r| r.kind() != Kind::Namespace);
    let objects: Vec<Value> = resources
        .iter()
        .map(|r| serde_json::from_slice(&r.to_stored()).expect("stored form is JSON"))
        .collect();
    let sized: Vec<(ResourceKey, usize)> = resources
        .iter()
        .zip(&objects)
        .map(|(r, o)| (r.key(), o.to_string().len() + 1))
        .collect();
    let client = Client::new(api)?;
    let limits = client.limits()?;
    // An object the agent would refuse whatever the part: refused here, by name.
    let oversized: Vec<String> = sized
        .iter()
        .filter(|(_, bytes)| *bytes > limits.object_bytes)
        .map(|(key, bytes)| {
            format!(
                "{key}: the object takes {}, over the agent's limit of {} per object",
                human_bytes(*bytes),
                human_bytes(limits.object_bytes)
            )
        })
        .collect();
    if !oversized.is_empty() {
        for e in &oversized {
            eprintln!("error: {e}");
        }
        bail!(
            "nothing was applied ({})",
            super::workloads::problems(oversized.len())
        );
    }
    let budget = limits.request_bytes - REQUEST_OVERHEAD;
    let parts = parts(&sized, budget);
    let suffix = if dry_run { " (dry run)" } else { "" };
    let send = |part: &Part, dry_run: bool| -> anyhow::Result<Value> {
        let body: Vec<&Value> = part
            .extra
            .iter()
            .chain(&part.own)
            .map(|&i| &objects[i])
            .collect();
        client.post(
            "/api/v1/apply",
            &json!({ "objects": body, "dryRun": dry_run }),
        )
    };
    let print = |part: &Part, answer: &Value| {
        let own: BTreeSet<(&str, &str, &str)> = part
            .own
            .iter()
            .map(|&i| {
                let k = &sized[i].0;
                (k.kind.as_str(), k.namespace.as_str(), k.name.as_str())
            })
            .collect();
        for r in answer["results"].as_array().into_iter().flatten() {
            let field = |f: &str| r[f].as_str().unwrap_or("");
            if !own.contains(&(field("kind"), field("namespace"), field("name"))) {
                continue;
            }
            println!(
                "{}/{} {}{suffix}",
                field("resource"),
                field("name"),
                field("outcome")
            );
        }
    };
    if let [one] = parts.as_slice() {
        // One request: the agent writes everything at once or nothing.
        let answer = send(one, dry_run)?;
        print(one, &answer);
        return Ok(());
    }
    let total: usize = sized.iter().map(|(_, b)| b).sum();
    eprintln!(
        "note: these {} objects take {}, over the {} one request to the agent may carry \
         (shoal agent --max-request-bytes): applying them in {} parts, each written at once, \
         once all passed a dry run",
        objects.len(),
        human_bytes(total),
        human_bytes(limits.request_bytes),
        parts.len()
    );
    let count = parts.len();
    let mut checked = Vec::with_capacity(count);
    for (i, part) in parts.iter().enumerate() {
        match send(part, true) {
            Ok(answer) => checked.push(answer),
            Err(e) => bail!("nothing was applied: part {} of {count}: {e}", i + 1),
        }
    }
    if dry_run {
        for (part, answer) in parts.iter().zip(&checked) {
            print(part, answer);
        }
        return Ok(());
    }
    for (i, part) in parts.iter().enumerate() {
        match send(part, false) {
            Ok(answer) => print(part, &answer),
            Err(e) if i == 0 => bail!("nothing was applied: part 1 of {count}: {e}"),
            Err(e) => bail!(
                "part {} of {count} was refused: {e}; parts 1 to {} were applied, nothing after",
                i + 1,
                i
            ),
        }
    }
    Ok(())
}

/// The agent's limits, or the defaults when it does not say (an older agent).
pub(crate) fn limits_or_default(answer: Option<Value>) -> BodyLimits {
    let Some(answer) = answer else {
        return BodyLimits::default();
    };
    let field = |name: &str| answer[name].as_u64().and_then(|n| usize::try_from(n).ok());
    match (field("requestBytes"), field("objectBytes")) {
        (Some(request_bytes), Some(object_bytes)) => BodyLimits {
            request_bytes: request_bytes.max(REQUEST_OVERHEAD + 1),
            object_bytes,
        },
        _ => BodyLimits::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, namespace: &str, name: &str) -> ResourceKey {
        ResourceKey {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_set_under_the_budget_is_one_part() {
        let objects = vec![
            (key(Kind::Namespace, "", "a"), 100),
            (key(Kind::Deployment, "a", "web"), 300),
        ];
        assert_eq!(
            parts(&objects, 400),
            [Part {
                own: vec![0, 1],
                extra: vec![]
            }]
        );
    }

    #[test]
    fn parts_stay_under_the_budget_and_carry_the_namespaces_their_objects_need() {
        let mut objects = vec![
            (key(Kind::Namespace, "", "a"), 50),
            (key(Kind::Namespace, "", "b"), 50),
        ];
        for i in 0..10 {
            let ns = if i % 2 == 0 { "a" } else { "default" };
            objects.push((key(Kind::Deployment, ns, &format!("d{i}")), 100));
        }
        let budget = 260;
        let got = parts(&objects, budget);
        // Every object once, in order.
        let own: Vec<usize> = got.iter().flat_map(|p| p.own.clone()).collect();
        assert_eq!(own, (0..objects.len()).collect::<Vec<_>>());
        for p in &got {
            let size: usize = p.own.iter().chain(&p.extra).map(|&i| objects[i].1).sum();
            assert!(size <= budget, "{p:?} takes {size}");
            // A part holding objects of namespace `a` holds `a`, its own or as an extra.
            let needs_a = p.own.iter().any(|&i| objects[i].0.namespace == "a");
            let has_a = p.own.contains(&0) || p.extra.contains(&0);
            assert_eq!(needs_a, has_a, "{p:?}");
            assert!(!p.extra.contains(&1), "nothing lives in b: {p:?}");
        }
        assert!(got.len() >= 5, "{got:?}");
    }

    #[test]
    fn an_object_over_the_budget_gets_a_part_of_its_own() {
        let objects = vec![
            (key(Kind::Deployment, "default", "small"), 10),
            (key(Kind::Deployment, "default", "big"), 500),
            (key(Kind::Deployment, "default", "small2"), 10),
        ];
        let got = parts(&objects, 100);
        let own: Vec<Vec<usize>> = got.into_iter().map(|p| p.own).collect();
        assert_eq!(own, [vec![0], vec![1], vec![2]]);
    }

    #[test]
    fn limits_of_an_agent_that_does_not_say_are_the_defaults() {
        assert_eq!(limits_or_default(None), BodyLimits::default());
        assert_eq!(
            limits_or_default(Some(json!({"requestBytes": 300000, "objectBytes": 200000}))),
            BodyLimits {
                request_bytes: 300_000,
                object_bytes: 200_000
            }
        );
    }
}
