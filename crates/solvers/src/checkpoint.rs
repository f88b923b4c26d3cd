//! Checkpoints of a run: everything needed to continue it bit for bit.
//!
//! A checkpoint holds the parameters (and the gradient and solver vectors)
//! as raw little-endian f64, the solver's scalar state, the counters, the
//! solver time and the trace so far. The file layout is
//!
//! ```text
//! magic "HFCKPT\r\n" | version u32 | header_len u64 | payload_len u64
//! | header (JSON, header_len bytes) | payload (payload_len bytes) | FNV-1a 64 of all before
//! ```
//!
//! all integers little-endian. The lengths and the checksum let a reader
//! refuse a truncated or corrupt file instead of resuming from garbage.
//! Vectors are stored as f64 whatever the run's dtype: f32 → f64 → f32 is
//! exact, and one payload type keeps the reader simple. Scalars whose bits
//! matter (damping, radius, cost) are stored as `u64` bit patterns because
//! JSON cannot carry NaN or infinities.
//!
//! [`write_atomic`] writes a temporary file, syncs it, moves the previous
//! checkpoint to `<file>.prev` and renames the new one into place, so a kill
//! at any moment leaves at least one complete checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Result, SolverError};
use crate::stop::StopReason;
use crate::trace::{Counts, TraceRecord};

/// Version of the binary layout; a checkpoint of another version is refused.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"HFCKPT\r\n";
/// magic + version + two lengths.
const FIXED: usize = 8 + 4 + 8 + 8;

/// A solver's state between two outer iterations: a JSON object that the
/// solver wrote, tagged `"solver": name` (its vectors live in
/// [`Snapshot::tensors`]).
///
/// Open, not an enum of this crate's solvers, so that a solver defined
/// anywhere saves a type of its own. The JSON text is kept as written: a
/// checkpoint decodes and re-encodes byte for byte without this crate
/// knowing the state's type.
#[derive(Clone, Debug)]
pub struct SolverState {
    name: String,
    json: Box<RawValue>,
}

#[derive(Serialize)]
struct Tagged<'a, T> {
    solver: &'a str,
    #[serde(flatten)]
    state: &'a T,
}

#[derive(Deserialize)]
struct Tag {
    solver: String,
}

impl SolverState {
    /// `state`'s fields (it must serialise as a JSON object) under the tag
    /// `"solver": name`.
    pub fn new<T: Serialize>(name: &str, state: &T) -> Result<Self> {
        let json = serde_json::value::to_raw_value(&Tagged {
            solver: name,
            state,
        })
        .map_err(|e| SolverError::Config(format!("{name} state: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            json,
        })
    }

    /// The solver that wrote it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The state as `T`, refused unless it was written by the solver `name`.
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        if self.name != name {
            return Err(SolverError::Config(format!(
                "the checkpoint holds {} state, not {name}",
                self.name
            )));
        }
        serde_json::from_str(self.json.get())
            .map_err(|e| SolverError::Config(format!("the checkpoint's {name} state: {e}")))
    }
}

impl PartialEq for SolverState {
    fn eq(&self, other: &Self) -> bool {
        self.json.get() == other.json.get()
    }
}

impl Serialize for SolverState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SolverState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let json = Box::<RawValue>::deserialize(d)?;
        let tag: Tag = serde_json::from_str(json.get()).map_err(|e| {
            serde::de::Error::custom(format!("solver state without a `solver` name: {e}"))
        })?;
        Ok(Self {
            name: tag.solver,
            json,
        })
    }
}

/// The JSON part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The method's name and settings (JSON), so a resume with different
    /// settings is refused instead of silently mixing two runs.
    pub method: String,
    /// The settings as JSON, including the method's name.
    pub settings: String,
    /// Outer iterations done.
    pub iter: u64,
    /// Set once the run has ended: a resume reuses the result.
    pub finished: Option<StopReason>,
    /// The argmin state's cost, as f64 bits.
    pub cost_bits: u64,
    /// Cost counters when the checkpoint was taken.
    pub counts: Counts,
    /// The solver's own seconds so far.
    pub solver_seconds: f64,
    /// Trace rows recorded (drives `test_every`).
    pub records: u64,
    /// The trace rows recorded so far.
    pub trace: Vec<TraceRecord>,
    /// The run's extras; filled only in the final checkpoint of a finished run.
    pub extras: BTreeMap<String, f64>,
    /// The solver's own state; `None` in the final checkpoint of a finished run.
    pub solver: Option<SolverState>,
    /// Name, dtype and length of each vector in the payload, in order.
    pub tensors: Vec<(String, String, usize)>,
}

/// A checkpoint in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Everything but the vectors.
    pub meta: SnapshotMeta,
    /// `param` always; `gradient` and the solver's own vectors when it has them.
    pub tensors: BTreeMap<String, (DType, Vec<f64>)>,
}

fn dtype_name(d: DType) -> Result<&'static str> {
    match d {
        DType::F64 => Ok("f64"),
        DType::F32 => Ok("f32"),
        other => Err(SolverError::Config(format!(
            "checkpoints store f32 or f64 vectors, not {other:?}"
        ))),
    }
}

impl Snapshot {
    /// Copies a tensor's values (exactly: f32 widens to f64 losslessly).
    pub fn put(&mut self, name: &str, t: &Tensor) -> Result<()> {
        let dtype = t.dtype();
        dtype_name(dtype)?;
        let v: Vec<f64> = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?;
        self.tensors.insert(name.to_string(), (dtype, v));
        Ok(())
    }

    /// The tensor `name` on `device`, in the dtype it was saved in.
    pub fn get(&self, name: &str, device: &Device) -> Result<Option<Tensor>> {
        match self.tensors.get(name) {
            None => Ok(None),
            Some((dtype, v)) => Ok(Some(
                Tensor::from_slice(v, v.len(), device)?.to_dtype(*dtype)?,
            )),
        }
    }

    /// The solver state saved by the solver `name`.
    pub fn solver_state<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        self.meta
            .solver
            .as_ref()
            .ok_or_else(|| SolverError::Config(format!("the checkpoint has no {name} state")))?
            .get(name)
    }

    /// The file's bytes: magic, version, lengths, the JSON header, the
    /// vectors as little-endian f64, and an FNV-1a checksum.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut meta = self.meta.clone();
        meta.tensors = self
            .tensors
            .iter()
            .map(|(k, (d, v))| Ok((k.clone(), dtype_name(*d)?.to_string(), v.len())))
            .collect::<Result<_>>()?;
        let header = serde_json::to_vec(&meta)
            .map_err(|e| SolverError::Config(format!("checkpoint header: {e}")))?;
        let payload_len: usize = self.tensors.values().map(|(_, v)| v.len() * 8).sum();
        let mut out = Vec::with_capacity(FIXED + header.len() + payload_len + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&(payload_len as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for (_, v) in self.tensors.values() {
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        Ok(out)
    }

    /// Parses a checkpoint; `Err` says what is wrong (never panics on bad input).
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.len() < FIXED + 8 {
            return Err(format!(
                "truncated: {} bytes, shorter than the {}-byte header",
                bytes.len(),
                FIXED + 8
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("not a hessfree checkpoint (bad magic)".into());
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            ));
        }
        let header_len = u64_at(12);
        let payload_len = u64_at(20);
        let expected = (FIXED as u64)
            .checked_add(header_len)
            .and_then(|n| n.checked_add(payload_len))
            .and_then(|n| n.checked_add(8));
        if expected != Some(bytes.len() as u64) {
            return Err(format!(
                "truncated or padded: the header announces {} bytes, the file has {}",
                expected.map_or("too many".to_string(), |n| n.to_string()),
                bytes.len()
            ));
        }
        let body_end = bytes.len() - 8;
        if fnv1a64(&bytes[..body_end]) != u64_at(body_end) {
            return Err("checksum mismatch: the file is corrupt".into());
        }
        let header_end = FIXED + header_len as usize;
        let meta: SnapshotMeta = serde_json::from_slice(&bytes[FIXED..header_end])
            .map_err(|e| format!("bad header: {e}"))?;
        let mut tensors = BTreeMap::new();
        let mut at = header_end;
        for (name, dtype, len) in &meta.tensors {
            let dtype = match dtype.as_str() {
                "f64" => DType::F64,
                "f32" => DType::F32,
                other => return Err(format!("tensor `{name}` has unknown dtype `{other}`")),
            };
            let end = len
                .checked_mul(8)
                .and_then(|n| n.checked_add(at))
                .filter(|&e| e <= body_end)
                .ok_or_else(|| format!("tensor `{name}` runs past the payload"))?;
            let v = bytes[at..end]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            if tensors.insert(name.clone(), (dtype, v)).is_some() {
                // Found by the fuzzer: a second copy silently replaced the first.
                return Err(format!("tensor `{name}` is listed twice in the header"));
            }
            at = end;
        }
        if at != body_end {
            return Err("the payload length does not match its tensors".into());
        }
        Ok(Self { meta, tensors })
    }
}

/// FNV-1a, 64 bits: enough to catch truncation and bit rot (not an attacker).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `<file>.prev`: the checkpoint before the current one.
pub fn prev_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".prev");
    PathBuf::from(s)
}

/// Writes `snapshot` to `path` atomically, keeping the old file as `.prev`.
/// A failed write leaves no temporary file, and is an I/O error naming the
/// file and the step that failed.
pub fn write_atomic(path: &Path, snapshot: &Snapshot) -> Result<()> {
    let io = |what: &str, source: std::io::Error| SolverError::Io {
        context: format!("checkpoint {}: {what}", path.display()),
        source,
    };
    let bytes = snapshot.encode()?;
    if path.exists() {
        std::fs::copy(path, prev_path(path)).map_err(|e| io("keep previous", e))?;
    }
    hessfree_fs::write_atomic(path, &bytes).map_err(|e| io("write", e))
}

/// Reads a checkpoint. A bad file is refused with an error naming it and,
/// when one exists, the `.prev` checkpoint to resume from instead.
pub fn read(path: &Path) -> Result<Snapshot> {
    let bytes = std::fs::read(path)
        .map_err(|e| SolverError::Config(format!("checkpoint {}: {e}", path.display())))?;
    Snapshot::decode(&bytes).map_err(|why| {
        let prev = prev_path(path);
        let hint = if prev.exists() {
            format!(
                "; the previous checkpoint {} may be intact: move it to {} to resume from it",
                prev.display(),
                path.display()
            )
        } else {
            String::new()
        };
        SolverError::Config(format!(
            "refusing checkpoint {}: {why}{hint}",
            path.display()
        ))
    })
}
