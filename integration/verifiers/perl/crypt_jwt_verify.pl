#!/usr/bin/perl
# Verifies a tsidp token with Crypt::JWT, finding the key through discovery
# and the JWKS.
#
# usage: crypt_jwt_verify.pl ISSUER AUDIENCE ALG TOKEN
#
# Prints the token's claims as JSON and exits 0 when the token is valid:
# signed with ALG by a key in the issuer's JWKS, issued by ISSUER, for
# AUDIENCE, and not expired. Exits 1 with a one-line reason when it is not,
# and 2 when Crypt::JWT cannot verify ALG at all.
use strict;
use warnings;
use Crypt::JWT qw(decode_jwt);
use HTTP::Tiny;
use JSON::PP;

@ARGV == 4 or die "usage: $0 ISSUER AUDIENCE ALG TOKEN\n";
my ($issuer, $audience, $alg, $token) = @ARGV;

my %supported = map { $_ => 1 } qw(RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA);
if (!$supported{$alg}) {
    print "Crypt::JWT $Crypt::JWT::VERSION does not support $alg\n";
    exit 2;
}

my $http = HTTP::Tiny->new(timeout => 10);
sub get_json {
    my ($url) = @_;
    my $res = $http->get($url);
    die "GET $url: $res->{status} $res->{reason}\n" unless $res->{success};
    return decode_json($res->{content});
}

# Discovery says where the keys are; it must name the issuer we trust.
(my $base = $issuer) =~ s{/$}{};
my $discovery = get_json("$base/.well-known/openid-configuration");
if ($discovery->{issuer} ne $issuer) {
    print "discovery names issuer $discovery->{issuer}, not $issuer\n";
    exit 1;
}
my $jwks = get_json($discovery->{jwks_uri});

my $claims = eval {
    decode_jwt(
        token        => $token,
        kid_keys     => $jwks,       # picks the key by the token's "kid"
        accepted_alg => $alg,        # never the token's own "alg" header
        verify_iss   => $issuer,
        verify_aud   => $audience,
        verify_sub   => qr/./,
        verify_exp   => 1,           # 1: exp must be present (the default only checks it if present)
        verify_nbf   => 1,
    );
};
if (!$claims) {
    (my $reason = $@) =~ s/ at \S+ line \d+\.?\n?\z//;
    print "$reason\n";
    exit 1;
}
print JSON::PP->new->canonical->encode($claims), "\n";
