//! A small `--flag value` parser shared by the examples (no dependency, errors instead of panics).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

/// Parsed `--name value` pairs and bare `--switch`es.
pub struct Args {
    values: BTreeMap<String, String>,
    usage: &'static str,
}

pub type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

impl Args {
    /// Parses the process arguments; `switches` are flags without a value. `--help` prints
    /// `usage` and exits.
    pub fn parse(usage: &'static str, switches: &[&str]) -> AnyResult<Self> {
        let mut values = BTreeMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "--help" || a == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let name = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}\n\n{usage}"))?
                .to_string();
            if switches.contains(&name.as_str()) {
                values.insert(name, "true".into());
                continue;
            }
            let v = it
                .next()
                .ok_or_else(|| format!("--{name} needs a value\n\n{usage}"))?;
            values.insert(name, v);
        }
        Ok(Self { values, usage })
    }

    /// Fails on flags not in `known`.
    pub fn only(&self, known: &[&str]) -> AnyResult<()> {
        match self.values.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown flag --{k}\n\n{}", self.usage).into()),
            None => Ok(()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    pub fn opt<T: FromStr>(&self, name: &str) -> AnyResult<Option<T>> {
        match self.values.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("--{name}: cannot parse {v:?}").into()),
        }
    }

    pub fn get<T: FromStr>(&self, name: &str, default: T) -> AnyResult<T> {
        Ok(self.opt(name)?.unwrap_or(default))
    }

    /// A comma-separated list, `default` when the flag is absent.
    pub fn list<T: FromStr>(&self, name: &str, default: &str) -> AnyResult<Vec<T>> {
        let v = self.values.get(name).map(String::as_str).unwrap_or(default);
        v.split(',')
            .map(|p| p.trim().parse::<T>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("--{name} takes a comma-separated list, got {v:?}").into())
    }

    pub fn required<T: FromStr>(&self, name: &str) -> AnyResult<T> {
        self.opt(name)?
            .ok_or_else(|| format!("--{name} is required\n\n{}", self.usage).into())
    }

    pub fn path(&self, name: &str) -> Option<PathBuf> {
        self.values.get(name).map(PathBuf::from)
    }
}
