//! `mkimage -i RAW -o IMAGE [-O CSUM] [-s TARGET_MiB] [-N NAME] [-z]`, one
//! thread: read 128 KiB, hash it, write it (or feed it to one level-9 zlib
//! stream), then the header at offset 0.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use flate2::write::ZlibEncoder;
use flate2::Compression;
use original_tools::{fail, Error, Header, BLOCK, COMPRESSED, HEADER_LEN};
use sha2::{Digest, Sha256};

struct Args {
    input: String,
    output: String,
    csum: Option<String>,
    target_mib: Option<u64>,
    name: String,
    compress: bool,
}

fn parse() -> Result<Args, Error> {
    let mut it = std::env::args().skip(1);
    let (mut input, mut output, mut csum, mut target_mib) = (None, None, None, None);
    let (mut name, mut compress) = (String::new(), false);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| fail(format!("{a} needs a value")));
        match a.as_str() {
            "-i" => input = Some(value()?),
            "-o" => output = Some(value()?),
            "-O" => csum = Some(value()?),
            "-s" => target_mib = Some(value()?.parse().map_err(|_| fail("bad -s"))?),
            "-N" | "--name" => name = value()?,
            "-z" | "--compress" => compress = true,
            _ => return Err(fail(format!("unexpected argument {a}"))),
        }
    }
    Ok(Args {
        input: input.ok_or_else(|| fail("-i is required"))?,
        output: output.ok_or_else(|| fail("-o is required"))?,
        csum,
        target_mib,
        name,
        compress,
    })
}

fn run() -> Result<(), Error> {
    let a = parse()?;
    let fi = File::open(&a.input)?;
    let mut fo = OpenOptions::new().create(true).truncate(true).write(true).open(&a.output)?;
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; BLOCK];
    let mut total: u64 = 0;
    let data_size;
    if a.compress {
        fo.seek(SeekFrom::Start(HEADER_LEN as u64))?;
        let mut z = ZlibEncoder::new(&fo, Compression::best());
        loop {
            let n = fi.read_at(&mut buf, total)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            z.write_all(&buf[..n])?;
            total += n as u64;
        }
        z.try_finish()?;
        data_size = z.total_out();
    } else {
        loop {
            let n = fi.read_at(&mut buf, total)?;
            if n == 0 {
                break;
            }
            sum.update(&buf[..n]);
            fo.write_all_at(&buf[..n], total + HEADER_LEN as u64)?;
            total += n as u64;
        }
        data_size = total;
    }
    let h = Header {
        flags: if a.compress { COMPRESSED } else { 0 },
        data_size,
        image_size: total,
        target_size: a.target_mib.map_or(4 << 30, |m| m << 20),
        sha256: sum.finalize().into(),
        dataset_name: "rpool/ROOT/ramdisk".into(),
        image_name: a.name,
    };
    if h.target_size < h.image_size {
        return Err(fail("target size is smaller than the image"));
    }
    fo.write_all_at(&h.to_bytes()?, 0)?;
    println!("ok, image written!");
    if let Some(path) = a.csum {
        std::fs::write(path, h.sha256)?;
        println!("ok, boot_image_csum file written!");
    }
    let _ = &mut fo;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("Error: {e}");
        std::process::exit(1);
    }
}
