# The benchmark's S3 front end inside nginx (ngx_http_perl_module): answers object GET/HEAD
# (Range, If-Match against the object's ETag, ?partNumber=1 of a multipart object) and
# ListObjects for one series prefix (or the whole bucket), after an injected time-to-first-
# byte delay. Bytes go out with nginx's sendfile, so serving costs little CPU next to the
# clients being measured.
#
# Flavours ($FLAVOUR), as benchmarks/data.py describes them: "s3" (MD5 ETags), "s3-crc"
# (x-amz-checksum-crc64nvme to a GET of the whole object or a HEAD that sends
# x-amz-checksum-mode: ENABLED, as S3 does; a range gets none), "gcs" (x-goog-hash with
# crc32c and md5 on every answer, ranges too, as GCS does), "multipart" (<md5>-N ETags).
#
# Settings come from S3BenchConf.pm, written by benchmarks/run.py next to nginx.conf:
# $ROOT (files as <root>/<bucket>/<key>), $LISTS (listings as <lists>/<bucket>/<uuid>.xml,
# whole buckets as <lists>/_bucket/<bucket>.xml, the object table <lists>/_objects.tsv),
# $DELAY_MS and $FLAVOUR.
package S3Bench;

use strict;
use warnings;
use nginx;
use S3BenchConf;

# name -> [path, etag, crc64nvme, crc32c, md5 (base64), part 1 size]
my %OBJECT;

sub load_objects {
    my $path = "$S3BenchConf::LISTS/_objects.tsv";
    open(my $fh, '<', $path) or die "cannot read $path: $!";
    while (my $line = <$fh>) {
        chomp $line;
        my ($name, $file, @facts) = split /\t/, $line;
        $OBJECT{$name} = ["$S3BenchConf::ROOT/$file", @facts];
    }
    close $fh;
}

load_objects();

sub handler {
    my $r = shift;
    if ($S3BenchConf::DELAY_MS > 0) {
        $r->sleep($S3BenchConf::DELAY_MS, \&answer);
        return OK;
    }
    return answer($r);
}

sub error_reply {
    my ($r, $status, $code) = @_;
    my $body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>$code</Code></Error>";
    $r->status($status);
    $r->header_out('Content-Length', length($body));
    $r->send_http_header('application/xml');
    $r->print($body) unless $r->header_only;
    return OK;
}

sub answer {
    my $r = shift;
    my $uri = $r->uri;
    my $args = $r->args // '';
    my ($bucket, $key) = $uri =~ m{^/([^/]+)/?(.*)$};
    return error_reply($r, 400, 'InvalidRequest') unless defined $bucket;

    if ($key eq '') {
        # a bucket-level GET is a listing; every series prefix has one prepared page
        # (the whole bucket: this workload's objects, for tools that copy a bucket)
        my ($series) = $args =~ /(?:^|&)prefix=([0-9a-f-]{36})(?:%2F|\/)?(?:&|$)/i;
        my $path = defined $series
            ? "$S3BenchConf::LISTS/$bucket/$series.xml"
            : "$S3BenchConf::LISTS/_bucket/$bucket.xml";
        return error_reply($r, 404, 'NoSuchBucket') unless -f $path;
        $r->status(200);
        $r->header_out('Content-Length', -s _);
        $r->send_http_header('application/xml');
        $r->sendfile($path) unless $r->header_only;
        return OK;
    }

    my $object = $OBJECT{"$bucket/$key"};
    return error_reply($r, 404, 'NoSuchKey') unless defined $object;
    my ($path, $etag, $crc64, $crc32c, $md5, $part1) = @$object;
    my $size = -s $path;
    return error_reply($r, 404, 'NoSuchKey') unless defined $size;

    my $if_match = $r->header_in('If-Match');
    if (defined $if_match) {
        (my $wanted = $if_match) =~ s/"//g;
        return error_reply($r, 412, 'PreconditionFailed') if $wanted ne $etag && $wanted ne '*';
    }

    my ($start, $length) = (0, $size);
    my $whole = 1;
    my $range = $r->header_in('Range');
    if ($args =~ /(?:^|&)partNumber=1(?:&|$)/ && $part1) {
        # part 1 of a multipart upload: its size fixes the part size behind the ETag
        ($start, $length, $whole) = (0, $part1, 0);
        $r->status(206);
        $r->header_out('Content-Range', "bytes 0-" . ($part1 - 1) . "/$size");
        $r->header_out('x-amz-mp-parts-count', int(($size + $part1 - 1) / $part1));
    } elsif (defined $range && $range =~ /^bytes=(\d*)-(\d*)$/) {
        my ($first, $last) = ($1, $2);
        if ($first eq '') {
            $first = $size - $last;
            $last = $size - 1;
        }
        $last = $size - 1 if $last eq '' || $last >= $size;
        return error_reply($r, 416, 'InvalidRange') if $first > $last;
        ($start, $length, $whole) = ($first, $last - $first + 1, 0);
        $r->status(206);
        $r->header_out('Content-Range', "bytes $first-$last/$size");
    } else {
        $r->status(200);
    }
    $r->header_out('ETag', "\"$etag\"");
    $r->header_out('Accept-Ranges', 'bytes');
    $r->header_out('Last-Modified', 'Mon, 01 Jan 2024 00:00:00 GMT');
    if ($S3BenchConf::FLAVOUR eq 'gcs') {
        $r->header_out('x-goog-hash', "crc32c=$crc32c,md5=$md5");
        $r->header_out('x-goog-stored-content-length', $size);
    } elsif ($S3BenchConf::FLAVOUR eq 's3-crc' && $whole) {
        my $mode = $r->header_in('x-amz-checksum-mode') // '';
        if (uc($mode) eq 'ENABLED') {
            $r->header_out('x-amz-checksum-crc64nvme', $crc64);
            $r->header_out('x-amz-checksum-type', 'FULL_OBJECT');
        }
    }
    $r->header_out('Content-Length', $length);
    $r->send_http_header('application/octet-stream');
    $r->sendfile($path, $start, $length) unless $r->header_only || $length == 0;
    return OK;
}

1;
