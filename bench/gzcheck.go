// gzcheck reads a gzip file with Go's compress/gzip, first as exactly one member
// (Multistream(false), which stops after the first member, as some readers do), then in the
// default multistream mode, and checks that both read the same bytes with a good CRC-32 and
// length. It is a manual check that dropdeploy's parallel gzip writer (src/archive/pgzip.rs)
// produces one single-member stream that Go clients accept:
//
//	go run bench/gzcheck.go FILE.gz
//
// It prints the byte count and CRC of each read, or an error and exits 1.
package main

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"hash/crc32"
	"io"
	"os"
)

// read decompresses path and returns the decompressed length and CRC-32. compress/gzip
// itself verifies the trailer's CRC and length at EOF and fails with gzip.ErrChecksum.
func read(path string, multistream bool) (int64, uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	zr, err := gzip.NewReader(br)
	if err != nil {
		return 0, 0, fmt.Errorf("header: %w", err)
	}
	zr.Multistream(multistream)
	h := crc32.NewIEEE()
	n, err := io.Copy(h, zr)
	if err != nil {
		return n, 0, fmt.Errorf("after %d bytes: %w", n, err)
	}
	if err := zr.Close(); err != nil {
		return n, 0, err
	}
	if !multistream {
		// One member must be the whole file: nothing may follow its trailer.
		if rest, _ := io.Copy(io.Discard, br); rest != 0 {
			return n, 0, fmt.Errorf("%d bytes follow the first gzip member", rest)
		}
	}
	return n, h.Sum32(), nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run bench/gzcheck.go FILE.gz")
		os.Exit(2)
	}
	path := os.Args[1]
	single, singleCRC, err := read(path, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: single-member read failed: %v\n", path, err)
		os.Exit(1)
	}
	fmt.Printf("single member: %d bytes, CRC %08x OK\n", single, singleCRC)
	multi, multiCRC, err := read(path, true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: multistream read failed: %v\n", path, err)
		os.Exit(1)
	}
	if multi != single || multiCRC != singleCRC {
		fmt.Fprintf(os.Stderr, "%s: multistream read gave %d bytes CRC %08x, single member %d bytes CRC %08x\n",
			path, multi, multiCRC, single, singleCRC)
		os.Exit(1)
	}
	fmt.Printf("multistream:   %d bytes, CRC %08x OK\n", multi, multiCRC)
}
