//! A compiled reader of stored profiles, for walks over every contact.
//!
//! Preview, snapshot and a backfill's look read every stored profile of a
//! tenant and ask a rule a few questions of each. In Python, most of that
//! time is making and freeing the objects of each parsed document; this
//! reader decompresses and parses a document into plain Rust data and
//! answers the questions views ask (`signals.profile.NativeView` wraps it),
//! so a contact costs two Python objects instead of dozens.
//!
//! It reads the layouts that `signals.profile` writes with zstd (markers `x`
//! and `y`: layout 4's first line, layout 3's one line); older layouts stay
//! with the Python reader. The meaning of every field is `signals.profile`'s;
//! tests hold this reader to the Python one on the same documents.

use std::collections::HashMap;
use std::fmt;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use zstd_safe::{DCtx, DDict, DParameter, FrameFormat};

/// A JSON object as its entries in document order: the objects of a profile
/// hold a few entries, where a scan beats hashing.
struct Entries<V>(Vec<(String, V)>);

impl<V> Default for Entries<V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<V>(std::marker::PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
            type Value = Entries<V>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((key, value)) = map.next_entry::<String, V>()? {
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }

        deserializer.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// `(occurred_at, event_id, value)`: views read the value alone.
#[derive(Deserialize)]
struct Stamped(IgnoredAny, IgnoredAny, Value);

/// What views read of a stored document (fields absent in it are empty).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Head {
    f: i64,
    t: Entries<i64>,
    l: Entries<Stamped>,
    a: Entries<Stamped>,
    c: Entries<Vec<i64>>,
    m: Entries<i64>,
    n: Option<i64>,
    ns: Option<String>,
}

/// One stored profile, read: what `signals.profile.NativeView` asks of it.
#[pyclass(frozen, module = "profilestream_native")]
struct StoredProfile {
    format: i64,
    dates: Vec<(String, i64)>,
    latest: Vec<(String, Value)>,
    attributes: Vec<(String, Value)>,
    /// Counter code -> its 15-minute slots, ascending (stored as steps).
    counters: Vec<(String, Vec<i64>)>,
    membership: Vec<(String, i64)>,
    next_wake_us: Option<i64>,
    next_wake_segment: Option<String>,
}

fn to_python(py: Python<'_>, value: &Value) -> PyResult<PyObject> {
    Ok(match value {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(u) = n.as_u64() {
                u.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            }
        }
        Value::String(s) => s.into_pyobject(py)?.into_any().unbind(),
        // Lists are tuples, as `signals.profile` holds "latest" values.
        Value::Array(items) => {
            let items: PyResult<Vec<PyObject>> = items.iter().map(|v| to_python(py, v)).collect();
            PyTuple::new(py, items?)?.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_python(py, v)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

fn find<'a, V>(entries: &'a [(String, V)], key: &str) -> Option<&'a V> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[pymethods]
impl StoredProfile {
    /// The layout version (`"f"`) the document was written in.
    #[getter]
    fn format(&self) -> i64 {
        self.format
    }

    /// A date signal's instant (µs) by its stored code, None when unset.
    fn date_us(&self, code: &str) -> Option<i64> {
        find(&self.dates, code).copied()
    }

    /// Every set date signal: stored code -> instant (µs).
    fn dates<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (code, at) in &self.dates {
            dict.set_item(code, at)?;
        }
        Ok(dict)
    }

    /// How many slots of a counter are at or after slot `first`.
    fn count_from(&self, code: &str, first: i64) -> usize {
        match find(&self.counters, code) {
            Some(slots) => slots.len() - slots.partition_point(|&s| s < first),
            None => 0,
        }
    }

    /// The slots of a counter at or after slot `first`, ascending.
    fn slots_from<'py>(
        &self,
        py: Python<'py>,
        code: &str,
        first: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let slots: &[i64] = match find(&self.counters, code) {
            Some(slots) => &slots[slots.partition_point(|&s| s < first)..],
            None => &[],
        };
        PyList::new(py, slots)
    }

    /// Every counter: stored code -> its slots (a tuple, ascending).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (code, slots) in &self.counters {
            dict.set_item(code, PyTuple::new(py, slots)?)?;
        }
        Ok(dict)
    }

    /// A "latest" value by its stored code (a tuple for a template), or None.
    fn latest(&self, py: Python<'_>, code: &str) -> PyResult<PyObject> {
        match find(&self.latest, code) {
            Some(value) => to_python(py, value),
            None => Ok(py.None()),
        }
    }

    /// An attribute's current value, None when unset or null.
    fn attribute(&self, py: Python<'_>, name: &str) -> PyResult<PyObject> {
        match find(&self.attributes, name) {
            Some(value) => to_python(py, value),
            None => Ok(py.None()),
        }
    }

    /// Every attribute whose current value is not null: name -> value.
    fn attributes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (name, value) in &self.attributes {
            if !value.is_null() {
                dict.set_item(name, to_python(py, value)?)?;
            }
        }
        Ok(dict)
    }

    /// Recorded memberships: segment id -> 2 * changes + (1 if a member).
    fn membership<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (segment, state) in &self.membership {
            dict.set_item(segment, state)?;
        }
        Ok(dict)
    }

    #[getter]
    fn next_wake_us(&self) -> Option<i64> {
        self.next_wake_us
    }

    #[getter]
    fn next_wake_segment(&self) -> Option<String> {
        self.next_wake_segment.clone()
    }
}

/// Reads stored profiles; built once with the zstd dictionaries by marker.
#[pyclass(module = "profilestream_native")]
struct Reader {
    dctx: DCtx<'static>,
    dictionaries: HashMap<u8, DDict<'static>>,
    buffer: Vec<u8>,
}

/// The largest decompressed document read (a stored profile is a few KiB;
/// a damaged frame may claim any size).
const MAX_DOCUMENT: usize = 64 * 1024 * 1024;

fn invalid(what: impl fmt::Display) -> PyErr {
    PyValueError::new_err(format!("not a readable stored profile: {what}"))
}

#[pymethods]
impl Reader {
    /// `dictionaries`: marker byte -> the raw-content dictionary of the
    /// magicless zstd frames written under that marker.
    #[new]
    fn new(dictionaries: HashMap<u8, Vec<u8>>) -> PyResult<Self> {
        let mut dctx = DCtx::create();
        dctx.set_parameter(DParameter::Format(FrameFormat::Magicless))
            .map_err(|code| invalid(zstd_safe::get_error_name(code)))?;
        Ok(Reader {
            dctx,
            dictionaries: dictionaries
                .into_iter()
                .map(|(marker, content)| (marker, DDict::create(&content)))
                .collect(),
            buffer: vec![0; 16 * 1024],
        })
    }

    /// Whether documents starting with this byte are read here.
    fn reads(&self, marker: u8) -> bool {
        self.dictionaries.contains_key(&marker)
    }

    /// One stored document (after its version prefix), read.
    fn read(&mut self, stored: &Bound<'_, PyBytes>) -> PyResult<StoredProfile> {
        let stored = stored.as_bytes();
        let (&marker, frame) = stored.split_first().ok_or_else(|| invalid("empty"))?;
        let ddict = self
            .dictionaries
            .get(&marker)
            .ok_or_else(|| invalid(format!("marker {marker:#04x}")))?;
        self.dctx
            .ref_ddict(ddict)
            .map_err(|code| invalid(zstd_safe::get_error_name(code)))?;
        let size = loop {
            match self.dctx.decompress(&mut self.buffer[..], frame) {
                Ok(size) => break size,
                Err(code)
                    if zstd_safe::get_error_name(code).contains("too small")
                        && self.buffer.len() < MAX_DOCUMENT =>
                {
                    let larger = (self.buffer.len() * 2).min(MAX_DOCUMENT);
                    self.buffer.resize(larger, 0);
                }
                Err(code) => return Err(invalid(zstd_safe::get_error_name(code))),
            }
        };
        // Layout 4 keeps what views read on its first line.
        let text = &self.buffer[..size];
        let head = match text.iter().position(|&b| b == b'\n') {
            Some(end) => &text[..end],
            None => text,
        };
        let head: Head = serde_json::from_slice(head).map_err(invalid)?;
        if head.f < 3 {
            return Err(invalid(format!("layout {}", head.f)));
        }
        let counters = head
            .c
            .0
            .into_iter()
            .map(|(code, steps)| {
                let mut total = 0i64;
                let slots = steps
                    .into_iter()
                    .map(|step| {
                        total = total.checked_add(step)?;
                        Some(total)
                    })
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| invalid(format!("counter {code} overflows")))?;
                Ok((code, slots))
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(StoredProfile {
            format: head.f,
            dates: head.t.0,
            latest: head.l.0.into_iter().map(|(k, s)| (k, s.2)).collect(),
            attributes: head.a.0.into_iter().map(|(k, s)| (k, s.2)).collect(),
            counters,
            membership: head.m.0,
            next_wake_us: head.n,
            next_wake_segment: head.ns,
        })
    }
}

#[pymodule]
fn profilestream_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Reader>()?;
    m.add_class::<StoredProfile>()?;
    Ok(())
}
