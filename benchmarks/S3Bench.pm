# The benchmark's S3 front end inside nginx (ngx_http_perl_module): answers object GET/HEAD
# (Range, If-Match against the object's real MD5 ETag) and ListObjects for one series
# prefix (or the whole bucket), after an injected time-to-first-byte delay. Bytes go out with nginx's sendfile,
# so serving costs little CPU next to the clients being measured.
#
# Settings come from S3BenchConf.pm, written by benchmarks/run.py next to nginx.conf:
# $ROOT (files as <root>/<bucket>/<key>, listings as <root>/_list/<bucket>/<uuid>.xml,
# ETags in <root>/_etags.tsv) and $DELAY_MS.
package S3Bench;

use strict;
use warnings;
use nginx;
use S3BenchConf;

my %ETAG;

sub load_etags {
    my $path = "$S3BenchConf::ROOT/_etags.tsv";
    open(my $fh, '<', $path) or die "cannot read $path: $!";
    while (my $line = <$fh>) {
        chomp $line;
        my ($name, $md5) = split /\t/, $line;
        $ETAG{$name} = $md5;
    }
    close $fh;
}

load_etags();

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
            ? "$S3BenchConf::ROOT/_list/$bucket/$series.xml"
            : "$S3BenchConf::ROOT/_list/$S3BenchConf::BUCKET_LIST/$bucket.xml";
        return error_reply($r, 404, 'NoSuchBucket') unless -f $path;
        $r->status(200);
        $r->header_out('Content-Length', -s _);
        $r->send_http_header('application/xml');
        $r->sendfile($path) unless $r->header_only;
        return OK;
    }

    my $etag = $ETAG{"$bucket/$key"};
    return error_reply($r, 404, 'NoSuchKey') unless defined $etag;
    my $path = "$S3BenchConf::ROOT/$bucket/$key";
    my $size = -s $path;
    return error_reply($r, 404, 'NoSuchKey') unless defined $size;

    my $if_match = $r->header_in('If-Match');
    if (defined $if_match) {
        (my $wanted = $if_match) =~ s/"//g;
        return error_reply($r, 412, 'PreconditionFailed') if $wanted ne $etag && $wanted ne '*';
    }

    my ($start, $length) = (0, $size);
    my $range = $r->header_in('Range');
    if (defined $range && $range =~ /^bytes=(\d*)-(\d*)$/) {
        my ($first, $last) = ($1, $2);
        if ($first eq '') {
            $first = $size - $last;
            $last = $size - 1;
        }
        $last = $size - 1 if $last eq '' || $last >= $size;
        return error_reply($r, 416, 'InvalidRange') if $first > $last;
        ($start, $length) = ($first, $last - $first + 1);
        $r->status(206);
        $r->header_out('Content-Range', "bytes $first-$last/$size");
    } else {
        $r->status(200);
    }
    $r->header_out('ETag', "\"$etag\"");
    $r->header_out('Accept-Ranges', 'bytes');
    $r->header_out('Last-Modified', 'Mon, 01 Jan 2024 00:00:00 GMT');
    $r->header_out('Content-Length', $length);
    $r->send_http_header('application/octet-stream');
    $r->sendfile($path, $start, $length) unless $r->header_only || $length == 0;
    return OK;
}

1;
