//! `lookimage [-s] IMAGE`: print the header, then (without -s) read the data
//! back 128 KiB at a time, through one zlib inflater when compressed, hash
//! it and compare with the header.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use flate2::read::ZlibDecoder;
use original_tools::{fail, hex, Error, Header, BLOCK, COMPRESSED, HEADER_LEN};
use sha2::{Digest, Sha256};

fn run() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let skip = args.iter().any(|a| a == "-s" || a == "--skip-checksum");
    let files: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if files.len() != 1 {
        return Err(fail("which image file do you want to inspect?"));
    }
    let mut fi = File::open(files[0])?;
    let mut hb = vec![0u8; HEADER_LEN];
    fi.read_exact_at(&mut hb, 0)?;
    let h = Header::from_bytes(&hb)?;
    let hsum = hex(&h.sha256);
    let compressed = h.flags & COMPRESSED != 0;
    println!("image name = {}", h.image_name);
    let names = if compressed { "COMPRESSED" } else { "(empty)" };
    println!("flags = {:#x} ({})", h.flags, names);
    println!("data size = {}", h.data_size);
    println!("image size = {}", h.image_size);
    println!("target size = {}", h.target_size);
    println!("image sum = {hsum}");
    println!("dataset name = {}", h.dataset_name);
    if h.data_size == 0 {
        return Err(fail(format!("data size is {}", h.data_size)));
    }
    if h.image_size < h.data_size {
        return Err(fail(format!("image size {} < data size {}", h.image_size, h.data_size)));
    }
    if compressed {
        println!("ratio = {:.2}x", h.image_size as f64 / h.data_size as f64);
    }
    if skip {
        return Ok(());
    }
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut total: u64 = 0;
    if compressed {
        fi.seek(SeekFrom::Start(HEADER_LEN as u64))?;
        let mut z = ZlibDecoder::new(fi);
        loop {
            let n = z.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            total += n as u64;
        }
    } else {
        loop {
            let n = fi.read_at(&mut buf, total + HEADER_LEN as u64)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            total += n as u64;
        }
    }
    if total != h.image_size {
        return Err(fail(format!(
            "read {total} bytes of image, but header says there should be {}",
            h.image_size
        )));
    }
    let got = hex(&sum.finalize());
    if got != hsum {
        return Err(fail(format!("image sum {got} does not match sum from header {hsum}")));
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}
