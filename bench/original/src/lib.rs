//! The data path of the original boot-image-tools (`mkimage`, `lookimage`),
//! rebuilt from the format specification with the very crate versions the
//! golden vectors were made with (flate2 1.0.25 over miniz_oxide 0.6.2,
//! sha2 0.10.5), so that oxboot's benchmarks can time the original's work
//! on this machine instead of quoting a figure measured elsewhere.
//!
//! Only what the benchmarks run is here: the header, one thread reading
//! 128 KiB at a time, hashing, deflating at level 9 and inflating through
//! flate2's streaming wrappers, as the original does.

use std::fmt;

pub const HEADER_LEN: usize = 4096;
pub const MAGIC: u32 = 0x1DEB_0075;
pub const VERSION: u32 = 2;
pub const COMPRESSED: u64 = 0x1;
pub const BLOCK: usize = 128 * 1024;

#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error(e.to_string())
    }
}

pub fn fail(msg: impl Into<String>) -> Error {
    Error(msg.into())
}

pub struct Header {
    pub flags: u64,
    pub data_size: u64,
    pub image_size: u64,
    pub target_size: u64,
    pub sha256: [u8; 32],
    pub dataset_name: String,
    pub image_name: String,
}

fn put_name(out: &mut [u8], name: &str, what: &str) -> Result<(), Error> {
    let b = name.as_bytes();
    // Byte 127 stays NUL: the OS requires a terminated dataset name.
    if b.len() > 127 {
        return Err(fail(format!("{what} is too long")));
    }
    out[..b.len()].copy_from_slice(b);
    Ok(())
}

fn get_name(field: &[u8], what: &str) -> Result<String, Error> {
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    if end == field.len() {
        return Err(fail(format!("{what} is not NUL-terminated")));
    }
    String::from_utf8(field[..end].to_vec()).map_err(|_| fail(format!("{what} is not UTF-8")))
}

impl Header {
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut h = vec![0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&self.flags.to_le_bytes());
        h[16..24].copy_from_slice(&self.data_size.to_le_bytes());
        h[24..32].copy_from_slice(&self.image_size.to_le_bytes());
        h[32..40].copy_from_slice(&self.target_size.to_le_bytes());
        h[40..72].copy_from_slice(&self.sha256);
        put_name(&mut h[72..200], &self.dataset_name, "dataset name")?;
        put_name(&mut h[200..328], &self.image_name, "image name")?;
        Ok(h)
    }

    pub fn from_bytes(h: &[u8]) -> Result<Header, Error> {
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
        if u32_at(0) != MAGIC {
            return Err(fail(format!("invalid magic {:#x}", u32_at(0))));
        }
        if u32_at(4) != VERSION {
            return Err(fail(format!("unsupported version {}", u32_at(4))));
        }
        Ok(Header {
            flags: u64_at(8),
            data_size: u64_at(16),
            image_size: u64_at(24),
            target_size: u64_at(32),
            sha256: h[40..72].try_into().unwrap(),
            dataset_name: get_name(&h[72..200], "dataset name")?,
            image_name: get_name(&h[200..328], "image name")?,
        })
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
