//! Minimal `.npy` (NumPy format 1.0–3.0) reader and writer for C-order
//! arrays of little-endian float32, int64 and uint8: the inputs of `embed`
//! and `score`.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct NpyError {
    pub path: String,
    pub message: String,
}

/// A parsed array: shape and raw little-endian values.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyArray {
    F32 { shape: Vec<usize>, data: Vec<f32> },
    I64 { shape: Vec<usize>, data: Vec<i64> },
    U8 { shape: Vec<usize>, data: Vec<u8> },
}

impl NpyArray {
    /// The NumPy dtype, as error messages name it.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            NpyArray::F32 { .. } => "float32",
            NpyArray::I64 { .. } => "int64",
            NpyArray::U8 { .. } => "uint8",
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            NpyArray::F32 { shape, .. } | NpyArray::I64 { shape, .. } | NpyArray::U8 { shape, .. } => shape,
        }
    }
}

fn err(path: &Path, message: impl Into<String>) -> NpyError {
    NpyError {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

/// Reads a `.npy` file of dtype `<f4`, `<i8` or `|u1`.
pub fn read(path: &Path) -> Result<NpyArray, NpyError> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    parse(&bytes).map_err(|m| err(path, m))
}

pub fn parse(bytes: &[u8]) -> Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (missing \\x93NUMPY magic)".into());
    }
    let (header_len, offset) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header =
        std::str::from_utf8(bytes.get(offset..offset + header_len).ok_or("truncated header")?).map_err(|_| "header is not text")?;
    let descr = header_value(header, "descr").ok_or("header has no 'descr'")?;
    let dtype = descr.trim_start_matches(['\'', '"']).split(['\'', '"']).next().unwrap_or("");
    if header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err("Fortran-order arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape_text = header_value(header, "shape").ok_or("header has no 'shape'")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("malformed 'shape'")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("malformed shape entry {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let count: usize = shape.iter().product();
    let body = &bytes[offset + header_len..];
    let width = match dtype {
        "<f4" => 4,
        "<i8" => 8,
        "|u1" | "<u1" => 1,
        other => {
            return Err(format!(
                "dtype {other:?} not supported: use float32 ('<f4') or uint8 ('|u1') images, or int64 ('<i8') locations"
            ));
        }
    };
    if body.len() != count * width {
        return Err(format!(
            "data has {} bytes but shape {shape:?} of {dtype} needs {}",
            body.len(),
            count * width
        ));
    }
    Ok(match width {
        1 => NpyArray::U8 {
            shape,
            data: body.to_vec(),
        },
        4 => NpyArray::F32 {
            shape,
            data: body.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        },
        _ => NpyArray::I64 {
            shape,
            data: body
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        },
    })
}

/// Serialises an array as `.npy` version 1.0.
pub fn to_bytes(array: &NpyArray) -> Vec<u8> {
    let (descr, shape, body): (&str, &Vec<usize>, Vec<u8>) = match array {
        NpyArray::F32 { shape, data } => ("<f4", shape, data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::I64 { shape, data } => ("<i8", shape, data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        NpyArray::U8 { shape, data } => ("|u1", shape, data.clone()),
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let a = NpyArray::F32 {
            shape: vec![2, 3],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
        };
        assert_eq!(parse(&to_bytes(&a)).unwrap(), a);
        let b = NpyArray::I64 {
            shape: vec![2, 4],
            data: (0..8).collect(),
        };
        assert_eq!(parse(&to_bytes(&b)).unwrap(), b);
        let c = NpyArray::U8 {
            shape: vec![1, 2, 2, 3],
            data: (0..12).map(|v| v * 20).collect(),
        };
        assert_eq!(parse(&to_bytes(&c)).unwrap(), c);
        assert_eq!((c.dtype_name(), c.shape()), ("uint8", &[1, 2, 2, 3][..]));
        let mut bad = to_bytes(&a);
        bad.pop();
        assert!(parse(&bad).unwrap_err().contains("needs 24"));
        let f64_header = to_bytes(&a).iter().map(|&c| if c == b'4' { b'8' } else { c }).collect::<Vec<u8>>();
        assert!(parse(&f64_header).is_err());
    }
}
