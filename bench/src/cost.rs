//! Request cost per million exported resources at AWS list prices
//! (us-east-1), from the counted export. Only per-request charges: no
//! Lambda GB-seconds, storage or data transfer.

use crate::scenarios::request_counts::Counted;
use std::fmt::Write as _;

/// List prices in US dollars per request or request unit.
struct Prices;
impl Prices {
    const LAMBDA_PER_REQ: f64 = 0.20 / 1e6;
    const DDB_WRITE_UNIT: f64 = 1.25 / 1e6;
    const DDB_READ_UNIT: f64 = 0.25 / 1e6;
    const S3_PUT: f64 = 0.005 / 1000.0;
    const S3_GET: f64 = 0.0004 / 1000.0;
}

/// S3 operations billed at the PUT/COPY/POST/LIST price.
const S3_PUT_CLASS: &[&str] = &[
    "PutObject",
    "UploadPart",
    "CreateMultipartUpload",
    "CompleteMultipartUpload",
    "ListObjectsV2",
    "ListObjects",
    "ListParts",
    "ListMultipartUploads",
    "CreateBucket",
    "PutBucketLifecycleConfiguration",
    "DeleteObjects",
];
/// S3 operations billed at the GET/HEAD price.
const S3_GET_CLASS: &[&str] = &[
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "GetBucketLifecycleConfiguration",
];
const DYNAMO_WRITES: &[&str] = &["PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems"];
const DYNAMO_READS: &[&str] = &["GetItem", "Query", "Scan"];

/// Quantities and dollars, both per million exported resources.
pub struct RequestCost<'a> {
    counted: &'a Counted,
    per_m: f64,
    /// Chunk-worker steps plus the kick-off (an upper bound on invocations).
    invokes: u64,
    s3_put: u64,
    s3_get: u64,
    /// One client GET per output file, not seen by the proxy.
    downloads: u64,
    lambda: f64,
    write: f64,
    read: f64,
    put: f64,
    get: f64,
}

impl<'a> RequestCost<'a> {
    pub fn of(c: &'a Counted) -> Self {
        let per_m = c.per_million();
        let invokes = c.run.steps + 1;
        let s3_put: u64 = S3_PUT_CLASS.iter().map(|o| c.s3.get(o)).sum();
        let s3_get: u64 = S3_GET_CLASS.iter().map(|o| c.s3.get(o)).sum();
        let downloads = c.run.files as u64;
        Self {
            counted: c,
            per_m,
            invokes,
            s3_put,
            s3_get,
            downloads,
            lambda: invokes as f64 * per_m * Prices::LAMBDA_PER_REQ,
            write: c.dynamo.write_units * per_m * Prices::DDB_WRITE_UNIT,
            read: c.dynamo.read_units * per_m * Prices::DDB_READ_UNIT,
            put: s3_put as f64 * per_m * Prices::S3_PUT,
            get: (s3_get + downloads) as f64 * per_m * Prices::S3_GET,
        }
    }

    /// Dollars per million resources.
    pub fn total(&self) -> f64 {
        self.lambda + self.write + self.read + self.put + self.get
    }

    /// The prices and assumptions, then the cost table.
    pub fn section(&self) -> String {
        let mut t = String::from(
            "Request cost per million exported resources at AWS list prices (us-east-1): Lambda \
             $0.20 per million requests; DynamoDB on-demand $1.25 per million write request units and \
             $0.25 per million read request units; S3 PUT/COPY/POST/LIST (incl. UploadPart, \
             Create/CompleteMultipartUpload) $0.005 per 1,000 and GET/HEAD $0.0004 per 1,000. \
             DynamoDB units are estimated from the proxied bodies: writes 1 WRU per started KB of the \
             request (×2 per item in TransactWriteItems), reads 1 RRU per started 4 KB of the response \
             (the store reads strongly consistently). Not included: Lambda GB-seconds, S3 storage and \
             data transfer, API Gateway, and the client's status polls.\n\n",
        );
        t.push_str(
            "| item | quantity per million resources | cost per million resources |\n|---|---:|---:|\n",
        );
        self.rows(&mut t);
        let _ = writeln!(t, "| **total** | | **${:.6}** |", self.total());
        t
    }

    fn rows(&self, t: &mut String) {
        let (c, per_m) = (self.counted, self.per_m);
        let requests = |ops: &[&str]| ops.iter().map(|o| c.dynamo.get(o)).sum::<u64>();
        let _ = writeln!(
            t,
            "| Lambda invocations | {:.1} | ${:.6} |",
            self.invokes as f64 * per_m,
            self.lambda
        );
        let _ = writeln!(
            t,
            "| DynamoDB write units ({} write requests) | {:.1} | ${:.6} |",
            requests(DYNAMO_WRITES),
            c.dynamo.write_units * per_m,
            self.write
        );
        let _ = writeln!(
            t,
            "| DynamoDB read units ({} read requests) | {:.1} | ${:.6} |",
            requests(DYNAMO_READS),
            c.dynamo.read_units * per_m,
            self.read
        );
        let _ = writeln!(
            t,
            "| S3 PUT-class requests | {:.1} | ${:.6} |",
            self.s3_put as f64 * per_m,
            self.put
        );
        let _ = writeln!(
            t,
            "| S3 GET-class requests (incl. {} client downloads, one per file) | {:.1} | ${:.6} |",
            self.downloads,
            (self.s3_get + self.downloads) as f64 * per_m,
            self.get
        );
    }
}
