//! '2023-01-27T18:28:08.129781Z' and '2017-09-11T19:55:05Z' to µs since the epoch, exactly like
//! `pipeline/models/timestamps.py`; any other form (offsets, odd digits) falls back to Python.

use crate::{Fallback, R};

fn digits(b: &[u8]) -> R<i64> {
    let mut n: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return Err(Fallback);
        }
        n = n * 10 + (c - b'0') as i64;
    }
    Ok(n)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn seconds(b: &[u8]) -> R<i64> {
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(Fallback);
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, s) = (digits(&b[11..13])?, digits(&b[14..16])?, digits(&b[17..19])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if y < 1 || !(1..=12).contains(&mo) || d < 1 || d > mdays[(mo - 1) as usize] || h > 23 || mi > 59 || s > 59 {
        return Err(Fallback);
    }
    Ok(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s)
}

pub fn ts_us(s: &str) -> R<i64> {
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() < 20 || !matches!(b[10], b'T' | b't' | b' ') || !matches!(b[b.len() - 1], b'Z' | b'z') {
        return Err(Fallback);
    }
    let secs = seconds(&b[..19])?;
    let frac = &b[19..b.len() - 1];
    if frac.is_empty() {
        return Ok(secs * 1_000_000);
    }
    if frac[0] != b'.' || frac.len() < 2 || !frac[1..].iter().all(u8::is_ascii_digit) {
        return Err(Fallback);
    }
    let ds = &frac[1..];
    let mut micros: i64 = 0;
    for i in 0..6 {
        micros = micros * 10 + if i < ds.len() { (ds[i] - b'0') as i64 } else { 0 };
    }
    Ok(secs * 1_000_000 + micros)
}
