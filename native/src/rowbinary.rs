//! Avro-encoded AuditEvent records -> ClickHouse RowBinary, for the sink's embedded inserts: chDB reads RowBinary
//! 2-3 us of CPU per event cheaper than the same rows as Avro (its Avro reader goes through the avro library field
//! by field; README, Benchmarks). Only the shapes the AuditEvent schema uses are understood; anything else, or
//! any record that does not decode exactly, is reported back so the caller sends it the Avro way.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[derive(Clone, Copy)]
enum Ty {
    Str,
    Int,
    Long,
    Bool,
    ArrStr,
    MapStr,
}

fn types_of(spec: &str) -> PyResult<Vec<Ty>> {
    spec.chars()
        .map(|c| match c {
            's' => Ok(Ty::Str),
            'i' => Ok(Ty::Int),
            'l' => Ok(Ty::Long),
            'b' => Ok(Ty::Bool),
            'A' => Ok(Ty::ArrStr),
            'M' => Ok(Ty::MapStr),
            _ => Err(PyValueError::new_err(format!("unknown field type code {c:?}"))),
        })
        .collect()
}

type R<T> = Result<T, ()>;

struct Rd<'a> {
    b: &'a [u8],
    p: usize,
}

impl<'a> Rd<'a> {
    #[inline(always)]
    fn long(&mut self) -> R<i64> {
        if let Some(&byte) = self.b.get(self.p) {
            if byte < 0x80 {
                self.p += 1;
                return Ok(((byte >> 1) as i64) ^ -((byte & 1) as i64));
            }
        }
        self.long_slow()
    }

    fn long_slow(&mut self) -> R<i64> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.b.get(self.p).ok_or(())?;
            self.p += 1;
            if shift == 63 && byte > 1 {
                return Err(()); // more than 64 bits
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(())
    }

    fn bytes(&mut self) -> R<&'a [u8]> {
        let n = self.long()?;
        if n < 0 || n as u64 > (self.b.len() - self.p) as u64 {
            return Err(());
        }
        let s = &self.b[self.p..self.p + n as usize];
        self.p += n as usize;
        Ok(s)
    }

    /// The item count of the next block of an array or map (0: the end), its byte size skipped.
    fn block(&mut self) -> R<u64> {
        let n = self.long()?;
        if n == 0 {
            return Ok(0);
        }
        let n = if n < 0 {
            if n == i64::MIN || self.long()? < 0 {
                return Err(());
            }
            -n
        } else {
            n
        } as u64;
        if n > (self.b.len() - self.p) as u64 {
            return Err(()); // every item takes at least one byte
        }
        Ok(n)
    }
}

#[inline(always)]
fn uleb(out: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[inline(always)]
fn string(r: &mut Rd, out: &mut Vec<u8>) -> R<()> {
    let s = r.bytes()?;
    uleb(out, s.len() as u64);
    out.extend_from_slice(s);
    Ok(())
}

fn record(r: &mut Rd, types: &[Ty], out: &mut Vec<u8>, items: &mut Vec<u8>) -> R<()> {
    for t in types {
        match t {
            Ty::Str => string(r, out)?,
            Ty::Int => {
                let v = i32::try_from(r.long()?).map_err(|_| ())?;
                out.extend_from_slice(&v.to_le_bytes());
            }
            Ty::Long => out.extend_from_slice(&r.long()?.to_le_bytes()),
            Ty::Bool => {
                let b = *r.b.get(r.p).ok_or(())?;
                if b > 1 {
                    return Err(());
                }
                r.p += 1;
                out.push(b);
            }
            Ty::ArrStr | Ty::MapStr => {
                // RowBinary puts the count first, Avro may cut an array into blocks: gather the items first
                items.clear();
                let mut count: u64 = 0;
                loop {
                    let n = r.block()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        string(r, items)?;
                        if let Ty::MapStr = t {
                            string(r, items)?;
                        }
                    }
                    count += n;
                }
                uleb(out, count);
                out.extend_from_slice(items);
            }
        }
    }
    Ok(())
}

/// The buffer kept between calls at most: a steady-state batch (45k events at 30k/s) is ~35 MB of rows.
const KEEP_BYTES: usize = 64 << 20;

thread_local! {
    // kept between calls: a fresh buffer of a batch's size costs page faults on every first touch
    static BUF: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// `runs`: (value, start, end, n): n AuditEvent records at value[start:end], written with the field types
/// `types` (one code per field: s string, i int, l long, b boolean, A array of strings, M map of strings).
/// Writes the RowBinary rows of every run that decoded exactly to the file `path`; returns the indices of the
/// runs that did not (nothing of theirs is written).
#[pyfunction]
pub fn avro_rowbinary<'py>(
    py: Python<'py>,
    types: &str,
    runs: Vec<(Bound<'py, PyBytes>, usize, usize, usize)>,
    path: std::path::PathBuf,
) -> PyResult<Vec<usize>> {
    let types = types_of(types)?;
    let slices: Vec<(&[u8], usize, usize, usize)> =
        runs.iter().map(|(v, s, e, n)| (v.as_bytes(), *s, *e, *n)).collect();
    py.allow_threads(|| {
        BUF.with(|cell| {
            let (out, items) = &mut *cell.borrow_mut();
            out.clear();
            let mut failed = Vec::new();
            for (i, (b, start, end, n)) in slices.iter().enumerate() {
                let mark = out.len();
                let ok = *start <= *end && *end <= b.len() && {
                    let mut r = Rd { b: &b[..*end], p: *start };
                    (0..*n).all(|_| record(&mut r, &types, out, items).is_ok()) && r.p == *end
                };
                if !ok {
                    out.truncate(mark);
                    failed.push(i);
                }
            }
            std::fs::write(&path, &out[..])?;
            if out.capacity() > KEEP_BYTES {
                *out = Vec::new(); // a backlog's batch: do not keep its memory for the steady state's small ones
            }
            if items.capacity() > KEEP_BYTES {
                *items = Vec::new();
            }
            Ok(failed)
        })
    })
}
