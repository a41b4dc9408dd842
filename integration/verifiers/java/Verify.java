// Verifies a tsidp token with the JDK alone (Java 17: java.net.http and JCA),
// finding the key through discovery and the JWKS.
//
// usage: java Verify.java ISSUER AUDIENCE ALG TOKEN
//
// Prints the token's claims as JSON and exits 0 when the token is valid:
// signed with ALG by a key in the issuer's JWKS, issued by ISSUER, for
// AUDIENCE, and not expired. Exits 1 with a one-line reason when it is not,
// and 2 when this JDK cannot verify ALG at all.

import java.math.BigInteger;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.security.AlgorithmParameters;
import java.security.KeyFactory;
import java.security.NoSuchAlgorithmException;
import java.security.PublicKey;
import java.security.Signature;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.ECParameterSpec;
import java.security.spec.ECPoint;
import java.security.spec.ECPublicKeySpec;
import java.security.spec.RSAPublicKeySpec;
import java.security.spec.X509EncodedKeySpec;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

public class Verify {
    static class Rejected extends Exception {
        Rejected(String reason) { super(reason); }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: java Verify.java ISSUER AUDIENCE ALG TOKEN");
            System.exit(2);
        }
        String issuer = args[0], audience = args[1], alg = args[2], token = args[3];
        try {
            System.out.println(verify(issuer, audience, alg, token));
        } catch (NoSuchAlgorithmException e) {
            System.out.println("cannot verify " + alg + ": " + e.getMessage());
            System.exit(2);
        } catch (Rejected e) {
            System.out.println(e.getMessage());
            System.exit(1);
        }
    }

    /** Returns the token's claims as JSON if it is valid. */
    static String verify(String issuer, String audience, String alg, String token) throws Exception {
        String jca = switch (alg) {
            case "RS256" -> "SHA256withRSA";
            case "ES256" -> "SHA256withECDSAinP1363Format"; // JWS signatures are r||s, not DER
            case "EdDSA" -> "Ed25519";
            default -> throw new NoSuchAlgorithmException("not implemented in Verify.java");
        };
        String[] parts = token.split("\\.", -1);
        if (parts.length != 3) throw new Rejected("not a compact JWS");
        Map<String, Object> header = Json.object(b64(parts[0]));
        if (!alg.equals(header.get("alg"))) { // never the token's own "alg" header
            throw new Rejected("token alg " + header.get("alg") + " is not " + alg);
        }

        // Discovery says where the keys are; it must name the issuer we trust.
        Map<String, Object> discovery = Json.object(get(issuer.replaceAll("/$", "") + "/.well-known/openid-configuration"));
        if (!issuer.equals(discovery.get("issuer"))) {
            throw new Rejected("discovery names issuer " + discovery.get("issuer") + ", not " + issuer);
        }
        Map<String, Object> jwk = null;
        for (Object k : (List<?>) Json.object(get((String) discovery.get("jwks_uri"))).get("keys")) {
            Map<?, ?> m = (Map<?, ?>) k;
            if (m.get("kid") != null && m.get("kid").equals(header.get("kid"))) {
                jwk = Json.cast(m);
            }
        }
        if (jwk == null) throw new Rejected("no key with kid " + header.get("kid") + " in the JWKS");

        Signature sig = Signature.getInstance(jca);
        sig.initVerify(publicKey(jwk, alg));
        sig.update((parts[0] + "." + parts[1]).getBytes(StandardCharsets.US_ASCII));
        if (!sig.verify(b64(parts[2]))) throw new Rejected("invalid signature");

        String payload = new String(b64(parts[1]), StandardCharsets.UTF_8);
        Map<String, Object> claims = Json.object(b64(parts[1]));
        long now = System.currentTimeMillis() / 1000;
        if (!issuer.equals(claims.get("iss"))) throw new Rejected("iss is " + claims.get("iss") + ", not " + issuer);
        Object aud = claims.get("aud");
        if (!(audience.equals(aud) || (aud instanceof List<?> l && l.contains(audience)))) {
            throw new Rejected("aud is " + aud + ", not " + audience);
        }
        if (!(claims.get("sub") instanceof String)) throw new Rejected("no sub");
        if (!(claims.get("exp") instanceof Number exp)) throw new Rejected("no exp");
        if (exp.longValue() <= now) throw new Rejected("token expired at exp " + exp.longValue() + ", now " + now);
        if (claims.get("nbf") instanceof Number nbf && nbf.longValue() > now) throw new Rejected("not valid before nbf " + nbf.longValue());
        return payload;
    }

    static PublicKey publicKey(Map<String, Object> jwk, String alg) throws Exception {
        String kty = (String) jwk.get("kty");
        switch (alg) {
            case "RS256" -> {
                if (!"RSA".equals(kty)) break;
                return KeyFactory.getInstance("RSA").generatePublic(new RSAPublicKeySpec(
                        new BigInteger(1, b64((String) jwk.get("n"))), new BigInteger(1, b64((String) jwk.get("e")))));
            }
            case "ES256" -> {
                if (!"EC".equals(kty) || !"P-256".equals(jwk.get("crv"))) break;
                AlgorithmParameters p = AlgorithmParameters.getInstance("EC");
                p.init(new ECGenParameterSpec("secp256r1"));
                ECPoint w = new ECPoint(new BigInteger(1, b64((String) jwk.get("x"))), new BigInteger(1, b64((String) jwk.get("y"))));
                return KeyFactory.getInstance("EC").generatePublic(new ECPublicKeySpec(w, p.getParameterSpec(ECParameterSpec.class)));
            }
            case "EdDSA" -> {
                if (!"OKP".equals(kty) || !"Ed25519".equals(jwk.get("crv"))) break;
                // SubjectPublicKeyInfo for Ed25519 (RFC 8410) is this prefix and the 32-byte key.
                byte[] x = b64((String) jwk.get("x"));
                byte[] der = new byte[12 + x.length];
                System.arraycopy(new byte[] {0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00}, 0, der, 0, 12);
                System.arraycopy(x, 0, der, 12, x.length);
                return KeyFactory.getInstance("Ed25519").generatePublic(new X509EncodedKeySpec(der));
            }
        }
        throw new Rejected("key " + jwk.get("kid") + " (" + kty + ") cannot verify " + alg);
    }

    static byte[] b64(String s) throws Rejected {
        try {
            return Base64.getUrlDecoder().decode(s);
        } catch (IllegalArgumentException e) {
            throw new Rejected("bad base64url: " + e.getMessage());
        }
    }

    static byte[] get(String url) throws Exception {
        HttpClient client = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(10)).build();
        HttpRequest req = HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10)).build();
        HttpResponse<byte[]> res = client.send(req, HttpResponse.BodyHandlers.ofByteArray());
        if (res.statusCode() != 200) throw new Rejected("GET " + url + ": " + res.statusCode());
        return res.body();
    }

    /** A minimal JSON parser: enough for JOSE headers, claims, discovery and JWKS. */
    static class Json {
        private final String s;
        private int i;

        private Json(String s) { this.s = s; }

        static Map<String, Object> object(byte[] b) throws Rejected {
            Json j = new Json(new String(b, StandardCharsets.UTF_8));
            Object v = j.value();
            j.ws();
            if (!(v instanceof Map<?, ?> m) || j.i != j.s.length()) throw new Rejected("not a JSON object");
            return cast(m);
        }

        @SuppressWarnings("unchecked")
        static Map<String, Object> cast(Map<?, ?> m) { return (Map<String, Object>) m; }

        private void ws() {
            while (i < s.length() && " \t\r\n".indexOf(s.charAt(i)) >= 0) i++;
        }

        private Rejected bad() { return new Rejected("bad JSON at offset " + i); }

        private Object value() throws Rejected {
            ws();
            if (i >= s.length()) throw bad();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++;
                ws();
                if (s.startsWith("}", i)) { i++; return m; }
                while (true) {
                    ws();
                    if (i >= s.length() || s.charAt(i) != '"') throw bad();
                    String k = string();
                    ws();
                    if (!s.startsWith(":", i)) throw bad();
                    i++;
                    if (m.put(k, value()) != null) throw new Rejected("duplicate JSON member " + k);
                    ws();
                    if (s.startsWith(",", i)) { i++; continue; }
                    if (s.startsWith("}", i)) { i++; return m; }
                    throw bad();
                }
            }
            if (c == '[') {
                List<Object> l = new ArrayList<>();
                i++;
                ws();
                if (s.startsWith("]", i)) { i++; return l; }
                while (true) {
                    l.add(value());
                    ws();
                    if (s.startsWith(",", i)) { i++; continue; }
                    if (s.startsWith("]", i)) { i++; return l; }
                    throw bad();
                }
            }
            if (c == '"') return string();
            for (String lit : new String[] {"true", "false", "null"}) {
                if (s.startsWith(lit, i)) {
                    i += lit.length();
                    return lit.equals("null") ? null : Boolean.valueOf(lit);
                }
            }
            int start = i;
            while (i < s.length() && "+-0123456789.eE".indexOf(s.charAt(i)) >= 0) i++;
            try {
                return Double.valueOf(s.substring(start, i));
            } catch (NumberFormatException e) {
                throw bad();
            }
        }

        private String string() throws Rejected {
            StringBuilder b = new StringBuilder();
            i++; // opening quote
            while (i < s.length()) {
                char c = s.charAt(i++);
                if (c == '"') return b.toString();
                if (c != '\\') { b.append(c); continue; }
                if (i >= s.length()) break;
                char e = s.charAt(i++);
                switch (e) {
                    case 'b' -> b.append('\b');
                    case 'f' -> b.append('\f');
                    case 'n' -> b.append('\n');
                    case 'r' -> b.append('\r');
                    case 't' -> b.append('\t');
                    case 'u' -> {
                        if (i + 4 > s.length()) throw bad();
                        try {
                            b.append((char) Integer.parseInt(s.substring(i, i + 4), 16));
                        } catch (NumberFormatException x) {
                            throw bad();
                        }
                        i += 4;
                    }
                    default -> b.append(e); // \" \\ \/
                }
            }
            throw bad();
        }
    }
}
