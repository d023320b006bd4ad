// frametok/reader.hpp: a header-only C++17 reader of the frametok wire protocol (version 1.3),
// written from docs/protocol.md.
//
//   frametok::decode(parts)      one multipart message -> a typed message (Frame / Status / Eos / Info),
//                                every buffer with its dtype and shape, after every check of §9; a
//                                malformed message throws frametok::Malformed with the rule's code
//   frametok::GridRebuilder      one stream's patch grid rebuilt from key / delta / skip updates (§5.1)
//   frametok::SequenceTracker    gaps and restarts in the streams' seq numbers (§6)
//   frametok::Reader             all three per stream, plus which streams have ended
//   frametok::to_json(message)   the decoded content in the language-neutral form of the test vectors
//                                (docs/protocol-vectors/README.md)
//   Frame::mask_cell / frame_mask / mask_area   (1.3) a detection's instance mask (det_mask, §5.3): its cells,
//                                its pixels in the source frame, their count
//
// Only nlohmann/json is needed (the transport, ZeroMQ, is the caller's: see examples/frametok_read.cpp).
// Parts are anything with data() and size() (std::string, std::vector<uint8_t>, zmq::message_t).
//
// Where the document lets a decoder choose, this reader takes the strict option: a repeated JSON
// key is rejected (`header-json`), and so is an integer outside the signed 64-bit range (`value`).
// Beyond the document: JSON nested deeper than 512 levels is rejected (`header-json`), and a JSON
// number beyond the double range anywhere in the header is rejected as `header-json` (the JSON
// parser refuses it), where pts_s = 1e400 is rule 17's `value` in the Python reader.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace frametok {

using json = nlohmann::json;

inline constexpr int kMajor = 1;
inline constexpr int kMinor = 3;
inline constexpr std::size_t kMaxHeaderBytes = 1048576;
inline constexpr std::size_t kMaxBuffers = 64;
inline constexpr std::size_t kMaxNdim = 4;
inline constexpr int kMaxJsonDepth = 512;

// --------------------------------------------------------------------------------------- errors

/// The message breaks a rule of docs/protocol.md §9; code() names the rule (`size-mismatch`, `grid`, ...).
class Malformed : public std::runtime_error {
public:
    Malformed(std::string code, const std::string& detail)
        : std::runtime_error(code + ": " + detail), code_(std::move(code)) {}
    const std::string& code() const noexcept { return code_; }

private:
    std::string code_;
};

// --------------------------------------------------------------------------------------- dtypes

enum class DType : std::uint8_t { uint8, int8, int16, int32, int64, float16, float32, float64 };

inline const char* dtype_name(DType t) {
    static const char* names[] = {"uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64"};
    return names[static_cast<int>(t)];
}

inline std::size_t itemsize(DType t) {
    static const std::size_t sizes[] = {1, 1, 2, 4, 8, 2, 4, 8};
    return sizes[static_cast<int>(t)];
}

inline std::optional<DType> dtype_from_name(std::string_view name) {
    for (int i = 0; i <= static_cast<int>(DType::float64); ++i) {
        if (name == dtype_name(static_cast<DType>(i))) return static_cast<DType>(i);
    }
    return std::nullopt;
}

inline bool is_token_dtype(DType t) { return t == DType::float16 || t == DType::float32; }

/// IEEE-754 binary16 -> binary32 (exact).
inline float half_to_float(std::uint16_t h) {
    std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t man = h & 0x3ffu;
    std::uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: man * 2^-24, exact in binary32
            float f = std::ldexp(static_cast<float>(man), -24);
            std::memcpy(&bits, &f, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float out;
    std::memcpy(&out, &bits, 4);
    return out;
}

/// IEEE-754 binary32 -> binary16, round to nearest, ties to even (as a float16 conversion does).
inline std::uint16_t float_to_half(float f) {
    std::uint32_t x;
    std::memcpy(&x, &f, 4);
    std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    std::uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) {  // inf or NaN (NaN stays quiet and keeps its top payload bits)
        return static_cast<std::uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u | ((a >> 13) & 0x3ffu) : 0u));
    }
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
    if (a <= 0x33000000u) return sign;                                         // <= 2^-25 rounds to 0
    if (a < 0x38800000u) {                                                     // a half subnormal
        std::uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - static_cast<int>(a >> 23);
        std::uint32_t h = man >> shift;
        std::uint32_t rem = man & ((1u << shift) - 1u);
        std::uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1u))) ++h;
        return static_cast<std::uint16_t>(sign | h);
    }
    std::uint32_t h = (a - 0x38000000u) >> 13;
    std::uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
    return static_cast<std::uint16_t>(sign | h);
}

/// CRC-32 (the zlib / PNG polynomial; Python's zlib.crc32), to compare arrays across languages.
inline std::uint32_t crc32(const std::uint8_t* data, std::size_t n, std::uint32_t crc = 0) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    crc = ~crc;
    for (std::size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xffu] ^ (crc >> 8);
    return ~crc;
}

// --------------------------------------------------------------------------------------- arrays

/// One buffer: raw little-endian, C-ordered bytes (copied out of the message) with dtype and shape.
struct Buffer {
    std::string name;
    DType dtype = DType::uint8;
    std::vector<std::uint64_t> shape;
    std::vector<std::uint8_t> bytes;

    std::size_t ndim() const { return shape.size(); }
    std::uint64_t size() const {  // number of elements
        std::uint64_t n = 1;
        for (auto d : shape) n *= d;
        return n;
    }
    /// Element i (flat, row-major) as a double (exact for every dtype but large int64 values).
    double f64(std::size_t i) const {
        const std::uint8_t* p = bytes.data() + i * itemsize(dtype);
        switch (dtype) {
            case DType::float16: return half_to_float(load<std::uint16_t>(p));
            case DType::float32: return load<float>(p);
            case DType::float64: return load<double>(p);
            default: return static_cast<double>(i64(i));
        }
    }
    /// Element i of an integer buffer.
    std::int64_t i64(std::size_t i) const {
        const std::uint8_t* p = bytes.data() + i * itemsize(dtype);
        switch (dtype) {
            case DType::uint8: return *p;
            case DType::int8: return static_cast<std::int8_t>(*p);
            case DType::int16: return load<std::int16_t>(p);
            case DType::int32: return load<std::int32_t>(p);
            case DType::int64: return load<std::int64_t>(p);
            default: return static_cast<std::int64_t>(f64(i));
        }
    }
    /// Element i of a float16 / float32 buffer as float (what the grid arithmetic of §5.1 uses).
    float f32(std::size_t i) const {
        return dtype == DType::float16 ? half_to_float(load<std::uint16_t>(bytes.data() + 2 * i))
                                       : static_cast<float>(f64(i));
    }
    bool is_float() const { return dtype == DType::float16 || dtype == DType::float32 || dtype == DType::float64; }

private:
    template <class T>
    static T load(const std::uint8_t* p) {  // the wire is little-endian; so is every target we build for
        static_assert(sizeof(T) <= 8, "scalar");
        T v;
        std::memcpy(&v, p, sizeof(T));
        return v;
    }
};

// --------------------------------------------------------------------------------------- messages

struct Timestamps {
    std::int64_t capture = 0, decode = 0, infer = 0, publish = 0;
};

enum class GridKind { key, delta, skip };

inline const char* grid_kind_name(GridKind k) {
    return k == GridKind::key ? "key" : k == GridKind::delta ? "delta" : "skip";
}

/// The `grid` header field of a frame (§5.1).
struct GridField {
    GridKind kind = GridKind::key;
    std::int64_t n = 0;
    std::int64_t gh = 0, gw = 0;
};

struct Frame {
    std::string stream;
    std::int64_t seq = 0;
    std::int64_t frame = 0;
    std::optional<double> pts_s;
    std::int64_t width = 0, height = 0;  // size_wh
    std::string policy;
    std::int64_t dropped = 0;
    Timestamps t_ns;
    std::map<std::string, std::string> models;
    std::optional<GridField> grid;
    bool damaged = false;  // (1.2) the source's data for this frame was damaged
    bool reused = false;   // (1.2) a still frame: no model ran, its tokens are the last ones
    std::map<std::string, Buffer> buffers;  // the known buffers of §5 only

    const Buffer* buffer(const std::string& name) const {
        auto it = buffers.find(name);
        return it == buffers.end() ? nullptr : &it->second;
    }
    /// Number of detections, or -1 when no detector ran.
    std::int64_t detections() const {
        const Buffer* b = buffer("det_xyxy");
        return b ? static_cast<std::int64_t>(b->shape[0]) : -1;
    }

    /// (1.3, §5.3) The (mh, mw) cells of each detection's mask; (0, 0) without det_mask.
    std::pair<std::int64_t, std::int64_t> mask_hw() const {
        const Buffer* m = buffer("det_mask");
        if (!m) return {0, 0};
        return {static_cast<std::int64_t>(m->shape[1]), 8 * static_cast<std::int64_t>(m->shape[2])};
    }
    /// Cell (r, c) of detection i's mask: bit 7 - c % 8 of byte (i * mh + r) * B + c / 8.
    bool mask_cell(std::size_t i, std::int64_t r, std::int64_t c) const {
        const Buffer& m = *buffer("det_mask");
        const std::size_t bytes = static_cast<std::size_t>(m.shape[2]);
        const std::size_t at = (i * static_cast<std::size_t>(m.shape[1]) + static_cast<std::size_t>(r)) * bytes +
                               static_cast<std::size_t>(c / 8);
        return (m.bytes[at] >> (7 - c % 8)) & 1u;
    }
    /// Each pixel's cell along one axis of a box [lo, hi) (-1: its centre is outside), exactly as §5.3 computes it.
    static std::vector<std::int64_t> mask_cells_along(double lo, double hi, std::int64_t pixels, std::int64_t cells) {
        std::vector<std::int64_t> out(static_cast<std::size_t>(pixels), -1);
        if (!(hi > lo)) return out;
        for (std::int64_t p = 0; p < pixels; ++p) {
            const double centre = static_cast<double>(p) + 0.5;
            if (!(centre >= lo && centre < hi)) continue;
            const double t = (centre - lo) * static_cast<double>(cells) / (hi - lo);
            out[static_cast<std::size_t>(p)] = std::min(static_cast<std::int64_t>(std::floor(t)), cells - 1);
        }
        return out;
    }
    /// Detection i's mask in source-frame pixels: height x width bytes, row-major, 1 where the mask is.
    std::vector<std::uint8_t> frame_mask(std::size_t i) const {
        std::vector<std::uint8_t> out(static_cast<std::size_t>(width * height), 0);
        const auto [mh, mw] = mask_hw();
        const Buffer& xyxy = *buffer("det_xyxy");
        const auto cols = mask_cells_along(xyxy.f64(4 * i), xyxy.f64(4 * i + 2), width, mw);
        const auto rows = mask_cells_along(xyxy.f64(4 * i + 1), xyxy.f64(4 * i + 3), height, mh);
        for (std::int64_t y = 0; y < height; ++y) {
            const std::int64_t r = rows[static_cast<std::size_t>(y)];
            if (r < 0) continue;
            for (std::int64_t x = 0; x < width; ++x) {
                const std::int64_t c = cols[static_cast<std::size_t>(x)];
                if (c >= 0 && mask_cell(i, r, c)) out[static_cast<std::size_t>(y * width + x)] = 1;
            }
        }
        return out;
    }
    /// The number of detection i's pixels (its mask area, §5.3).
    std::int64_t mask_area(std::size_t i) const {
        std::int64_t n = 0;
        for (std::uint8_t v : frame_mask(i)) n += v;
        return n;
    }
};

struct Status {
    std::string stream;
    std::int64_t seq = 0;
    std::string state, detail;
    std::int64_t t_ns = 0;
};

struct Eos {
    std::string stream;
    std::int64_t seq = 0;
    std::int64_t frames = 0;
    std::string reason, detail;
};

struct Info {
    std::string stream;
    std::int64_t seq = 0;
    std::string policy;
    json models = json::object();
    std::optional<std::int64_t> worker;                 // (1.2) the worker serving the stream
    std::optional<std::vector<std::string>> streams;  // (1.2) every stream the publisher serves

    std::vector<std::string> class_names() const {
        std::vector<std::string> out;
        auto det = models.find("detector");
        if (det == models.end() || !det->is_object()) return out;
        auto names = det->find("class_names");
        if (names == det->end() || !names->is_array()) return out;
        for (const auto& n : *names) out.push_back(n.is_string() ? n.get<std::string>() : std::string());
        return out;
    }
};

using Message = std::variant<Frame, Status, Eos, Info>;

inline const std::string& stream_of(const Message& m) {
    return std::visit([](const auto& x) -> const std::string& { return x.stream; }, m);
}
inline std::int64_t seq_of(const Message& m) {
    return std::visit([](const auto& x) { return x.seq; }, m);
}
inline const char* kind_of(const Message& m) {
    static const char* kinds[] = {"frame", "status", "eos", "info"};
    return kinds[m.index()];
}

// --------------------------------------------------------------------------------------- decoding

namespace detail {

struct PartView {
    const std::uint8_t* data;
    std::size_t size;
};

inline const std::array<const char*, 2> kPolicies = {"file", "live"};
inline const std::array<const char*, 6> kStates = {"connecting", "online", "stalled", "reconnecting", "offline", "error"};
inline const std::array<const char*, 3> kReasons = {"end", "error", "stopped"};
inline const std::array<const char*, 3> kGridKinds = {"key", "delta", "skip"};

inline std::string shorten(const json& v, std::size_t n = 60) {
    std::string s = v.dump();
    return s.size() > n ? s.substr(0, n) + "..." : s;
}

inline bool is_int(const json& v) { return v.is_number_integer(); }  // bools are their own JSON type

inline bool fits_int64(const json& v) {
    return !v.is_number_unsigned() || v.get<std::uint64_t>() <= static_cast<std::uint64_t>(INT64_MAX);
}

inline std::int64_t get_int(const json& obj, const char* key, std::optional<std::int64_t> minimum,
                            const char* code = "field") {
    auto it = obj.find(key);
    if (it == obj.end()) throw Malformed(code, std::string("missing '") + key + "'");
    if (!is_int(*it)) throw Malformed(code, std::string("'") + key + "' must be an integer, got " + shorten(*it));
    if (!fits_int64(*it)) throw Malformed("value", std::string("'") + key + "' is outside the signed 64-bit range");
    std::int64_t v = it->get<std::int64_t>();
    if (minimum && v < *minimum) {
        throw Malformed(code, std::string("'") + key + "' must be >= " + std::to_string(*minimum));
    }
    return v;
}

template <std::size_t N>
inline std::string get_str(const json& obj, const char* key, const std::array<const char*, N>* choices,
                           const char* code = "field") {
    auto it = obj.find(key);
    if (it == obj.end()) throw Malformed(code, std::string("missing '") + key + "'");
    if (!it->is_string()) throw Malformed(code, std::string("'") + key + "' must be a string");
    std::string v = it->get<std::string>();
    if (choices) {
        bool ok = false;
        for (const char* c : *choices) ok = ok || v == c;
        if (!ok) throw Malformed("value", std::string("'") + key + "' has a value not allowed: " + shorten(*it));
    }
    return v;
}

inline std::string get_str(const json& obj, const char* key) {
    return get_str<1>(obj, key, nullptr);
}

inline const json& get_obj(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end()) throw Malformed("field", std::string("missing '") + key + "'");
    if (!it->is_object()) throw Malformed("field", std::string("'") + key + "' must be an object");
    return *it;
}

/// An optional boolean (1.2): absent or null is false; anything else that is not a boolean is `field`.
inline bool get_flag(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return false;
    if (!it->is_boolean()) throw Malformed("field", std::string("'") + key + "' must be a boolean, got " + shorten(*it));
    return it->get<bool>();
}

inline bool valid_stream_id(const std::string& s);

/// An optional array of distinct stream ids (1.2): absent or null is none.
inline std::optional<std::vector<std::string>> get_stream_ids(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return std::nullopt;
    bool strings = it->is_array();
    if (strings) {
        for (const auto& v : *it) strings = strings && v.is_string();
    }
    if (!strings) throw Malformed("field", std::string("'") + key + "' must be an array of strings");
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& v : *it) {
        std::string s = v.get<std::string>();
        if (!valid_stream_id(s) || !seen.insert(s).second) {
            throw Malformed("value", std::string("'") + key + "' must hold distinct stream ids, got " + shorten(*it));
        }
        out.push_back(std::move(s));
    }
    return out;
}

inline bool valid_stream_id(const std::string& s) {
    auto alnum = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
    if (s.empty() || s.size() > 64 || !alnum(s[0])) return false;
    for (std::size_t i = 1; i < s.size(); ++i) {
        char c = s[i];
        if (!(alnum(c) || c == '_' || c == '.' || c == '-')) return false;
    }
    return true;
}

struct RepeatedKey : std::runtime_error {
    using std::runtime_error::runtime_error;
};

inline json parse_header(const PartView& part) {
    if (part.size > kMaxHeaderBytes) {
        throw Malformed("header-size", "header is " + std::to_string(part.size) + " bytes");
    }
    const char* text = reinterpret_cast<const char*>(part.data);
    if (part.size >= 3 && std::memcmp(text, "\xef\xbb\xbf", 3) == 0) throw Malformed("header-json", "byte-order mark");
    std::vector<std::set<std::string>> keys;  // the keys of each object being parsed
    auto check = [&keys](int depth, json::parse_event_t event, json& parsed) {
        if (depth > kMaxJsonDepth) throw RepeatedKey("JSON nested too deep");
        switch (event) {
            case json::parse_event_t::object_start: keys.emplace_back(); break;
            case json::parse_event_t::object_end: keys.pop_back(); break;
            case json::parse_event_t::key:
                if (!keys.back().insert(parsed.get<std::string>()).second) {
                    throw RepeatedKey("repeated key " + parsed.dump());
                }
                break;
            default: break;
        }
        return true;
    };
    json header;
    try {
        header = json::parse(text, text + part.size, check);  // validates UTF-8; NaN/Infinity are not JSON
    } catch (const json::exception& e) {
        throw Malformed("header-json", e.what());
    } catch (const RepeatedKey& e) {
        throw Malformed("header-json", e.what());
    }
    if (!header.is_object()) throw Malformed("header-type", std::string("header is a JSON ") + header.type_name());
    return header;
}

inline std::map<std::string, Buffer> parse_buffers(const json& header, const PartView* parts, std::size_t n) {
    auto it = header.find("buffers");
    if (it == header.end() || !it->is_array() || it->size() > kMaxBuffers) {
        throw Malformed("buffers", "buffers must be an array of at most 64 descriptors");
    }
    const json& descs = *it;
    if (descs.size() != n) {
        throw Malformed("part-count", std::to_string(descs.size()) + " descriptors, " + std::to_string(n) +
                                          " buffer parts");
    }
    std::map<std::string, Buffer> out;
    for (std::size_t i = 0; i < n; ++i) {
        const json& d = descs[i];
        if (!d.is_object()) throw Malformed("descriptor", "a descriptor must be an object");
        auto name = d.find("name"), dtype = d.find("dtype"), shape = d.find("shape");
        if (name == d.end() || !name->is_string() || dtype == d.end() || !dtype->is_string() || shape == d.end() ||
            !shape->is_array()) {
            throw Malformed("descriptor", "bad descriptor " + shorten(d));
        }
        std::string nm = name->get<std::string>();
        auto t = dtype_from_name(dtype->get<std::string>());
        if (!t) throw Malformed("dtype", "'" + nm + "': dtype " + shorten(*dtype));
        if (shape->size() > kMaxNdim) throw Malformed("shape", "'" + nm + "': shape " + shorten(*shape));
        Buffer b;
        b.name = nm;
        b.dtype = *t;
        constexpr std::uint64_t kLimit = static_cast<std::uint64_t>(INT64_MAX);  // 2^63 - 1
        std::uint64_t nonzero = itemsize(*t);  // the non-zero dimensions multiplied, times the item size
        bool any_zero = false, too_large = false;
        for (const auto& dim : *shape) {
            if (!is_int(dim) || (!dim.is_number_unsigned() && dim.get<std::int64_t>() < 0)) {
                throw Malformed("shape", "'" + nm + "': shape " + shorten(*shape));
            }
            std::uint64_t v = dim.is_number_unsigned() ? dim.get<std::uint64_t>()
                                                       : static_cast<std::uint64_t>(dim.get<std::int64_t>());
            b.shape.push_back(v);
            if (v == 0) {
                any_zero = true;
            } else if (!too_large) {
                if (v > kLimit / nonzero) {
                    too_large = true;  // nonzero * v would reach 2^63
                } else {
                    nonzero *= v;
                }
            }
        }
        if (too_large) throw Malformed("shape", "'" + nm + "': shape " + shorten(*shape) + " is too large");
        std::uint64_t nbytes = any_zero ? 0 : static_cast<std::uint64_t>(nonzero);
        const PartView& p = parts[i];
        if (p.size != nbytes) {
            throw Malformed("size-mismatch", "'" + nm + "': " + std::to_string(p.size) + " bytes for shape " +
                                                 shorten(*shape) + " of " + dtype_name(*t));
        }
        if (out.count(nm)) throw Malformed("duplicate-buffer", "'" + nm + "' twice");
        b.bytes.assign(p.data, p.data + p.size);
        out.emplace(nm, std::move(b));
    }
    return out;
}

inline std::optional<GridField> parse_grid(const json& header, const std::map<std::string, Buffer>& bufs) {
    bool has_index = bufs.count("patch_index") > 0, has_values = bufs.count("patch_values") > 0;
    bool has_bias = bufs.count("patch_bias") > 0, has_patches = bufs.count("patches") > 0;
    bool delta_parts = has_index || has_values || has_bias;
    auto it = header.find("grid");
    if (it == header.end() || it->is_null()) {  // (1.2) null is the same as absent
        if (delta_parts) throw Malformed("grid", "patch_index/patch_values without grid");
        return std::nullopt;
    }
    const json& g = *it;
    if (!g.is_object()) throw Malformed("grid", "grid must be an object");
    GridField out;
    std::string kind = get_str(g, "kind", static_cast<const std::array<const char*, 1>*>(nullptr), "grid");
    if (kind != "key" && kind != "delta" && kind != "skip") {  // every failure of the grid field is `grid`
        throw Malformed("grid", "grid.kind " + shorten(g["kind"]));
    }
    out.kind = kind == "key" ? GridKind::key : kind == "delta" ? GridKind::delta : GridKind::skip;
    auto n = g.find("n");
    if (n == g.end() || !is_int(*n) || !fits_int64(*n) || n->get<std::int64_t>() < 0) {
        throw Malformed("grid", "grid.n " + (n == g.end() ? std::string("missing") : shorten(*n)));
    }
    out.n = n->get<std::int64_t>();
    auto hw = g.find("hw");
    bool ok = hw != g.end() && hw->is_array() && hw->size() == 2;
    if (ok) {
        for (const auto& v : *hw) ok = ok && is_int(v) && fits_int64(v) && v.get<std::int64_t>() > 0;
    }
    if (!ok) throw Malformed("grid", "grid.hw " + (hw == g.end() ? std::string("missing") : shorten(*hw)));
    out.gh = (*hw)[0].get<std::int64_t>();
    out.gw = (*hw)[1].get<std::int64_t>();
    if (out.kind == GridKind::key) {
        if (!has_patches || delta_parts || static_cast<std::int64_t>(bufs.at("patches").shape[0]) != out.gh ||
            static_cast<std::int64_t>(bufs.at("patches").shape[1]) != out.gw) {
            throw Malformed("grid", "a key update carries patches of shape (gh, gw, D) and no delta buffers");
        }
    } else if (out.kind == GridKind::delta) {
        if (has_patches || !has_index || !has_values) {
            throw Malformed("grid", "a delta update carries patch_index and patch_values, not patches");
        }
        const Buffer& index = bufs.at("patch_index");
        const Buffer& values = bufs.at("patch_values");
        if (values.ndim() != 2 || values.shape[0] != index.shape[0]) {
            throw Malformed("grid", "patch_values must be (K, D) for K indices");
        }
        if (has_bias) {
            const Buffer& bias = bufs.at("patch_bias");
            if (bias.ndim() != 1 || bias.shape[0] != values.shape[1]) throw Malformed("grid", "patch_bias must be (D,)");
        }
        for (std::size_t k = 0; k < index.size(); ++k) {
            std::int64_t v = index.i64(k);
            if (v < 0 || v / out.gw >= out.gh) throw Malformed("grid", "patch_index out of range");  // v >= gh * gw
        }
    } else if (has_patches || delta_parts) {
        throw Malformed("grid", "a skip update carries no patch buffers");
    }
    return out;
}

/// (1.2) The code grid buffers (§5.2): `codes` whole, or a delta's `code_index` / `code_values`.
inline void check_codes(const std::optional<GridField>& grid, const std::map<std::string, Buffer>& bufs) {
    for (const char* name : {"codes", "code_values"}) {
        auto b = bufs.find(name);
        if (b == bufs.end()) continue;
        for (std::size_t k = 0; k < b->second.size(); ++k) {
            if (b->second.i64(k) < 0) throw Malformed("grid", std::string(name) + ": a code is negative");
        }
    }
    bool has_index = bufs.count("code_index") > 0, has_values = bufs.count("code_values") > 0;
    auto codes = bufs.find("codes");
    bool has_codes = codes != bufs.end();
    if (!grid) {
        if (has_index || has_values) throw Malformed("grid", "code_index/code_values without grid");
        auto p = bufs.find("patches");
        if (has_codes && p != bufs.end() &&
            (codes->second.shape[0] != p->second.shape[0] || codes->second.shape[1] != p->second.shape[1])) {
            throw Malformed("grid", "codes do not match the patch grid");
        }
        return;
    }
    if (has_codes && (static_cast<std::int64_t>(codes->second.shape[0]) != grid->gh ||
                      static_cast<std::int64_t>(codes->second.shape[1]) != grid->gw)) {
        throw Malformed("grid", "codes must be (gh, gw)");
    }
    if (grid->kind == GridKind::skip && (has_codes || has_index || has_values)) {
        throw Malformed("grid", "a skip update carries no code buffers");
    }
    if (has_index || has_values) {
        if (grid->kind != GridKind::delta || has_codes || !has_index || !has_values) {
            throw Malformed("grid", "code_index and code_values come together, in a delta without codes");
        }
        const Buffer& index = bufs.at("code_index");
        if (index.shape[0] != bufs.at("code_values").shape[0]) {
            throw Malformed("grid", "code_index and code_values must have the same C");
        }
        for (std::size_t k = 0; k < index.size(); ++k) {
            std::int64_t v = index.i64(k);
            if (v < 0 || v / grid->gw >= grid->gh) throw Malformed("grid", "code_index out of range");
        }
    }
}

inline Frame parse_frame(const json& h, std::map<std::string, Buffer>&& bufs) {
    Frame f;
    f.stream = h["stream"].get<std::string>();
    f.seq = h["seq"].get<std::int64_t>();
    auto size = h.find("size_wh");
    bool ok = size != h.end() && size->is_array() && size->size() == 2;
    if (ok) {
        for (const auto& v : *size) {
            ok = ok && is_int(v) && (v.is_number_unsigned() ? v.get<std::uint64_t>() > 0 : v.get<std::int64_t>() > 0);
        }
    }
    if (!ok) throw Malformed("field", "size_wh " + (size == h.end() ? std::string("missing") : shorten(*size)));
    for (const auto& v : *size) {
        if (!fits_int64(v)) throw Malformed("value", "size_wh is outside the signed 64-bit range");
    }
    f.width = (*size)[0].get<std::int64_t>();
    f.height = (*size)[1].get<std::int64_t>();
    const json& t = get_obj(h, "t_ns");
    auto stamp = [&t](const char* key) { return t.contains(key) ? get_int(t, key, std::nullopt) : 0; };
    f.t_ns = {stamp("capture"), stamp("decode"), stamp("infer"), stamp("publish")};
    auto models = h.find("models");
    if (models != h.end() && !models->is_null()) {
        bool strings = models->is_object();
        if (strings) {
            for (const auto& [k, v] : models->items()) strings = strings && v.is_string();
        }
        if (!strings) throw Malformed("field", "models must be an object of strings");
        for (const auto& [k, v] : models->items()) f.models[k] = v.get<std::string>();
    }
    auto pts = h.find("pts_s");
    if (pts != h.end() && !pts->is_null()) {
        if (!pts->is_number()) throw Malformed("field", "pts_s " + shorten(*pts));
        double v = pts->get<double>();
        if (!std::isfinite(v)) throw Malformed("value", "pts_s is not a finite double");
        f.pts_s = v;
    }
    f.frame = get_int(h, "frame", 0);
    f.policy = get_str(h, "policy", &kPolicies);
    f.dropped = get_int(h, "dropped", 0);
    f.damaged = get_flag(h, "damaged");
    f.reused = get_flag(h, "reused");

    std::vector<const char*> known;  // the buffers this version knows, checked; the others are ignored
    auto take = [&known](const char* name) { known.push_back(name); };
    if (bufs.count("det_xyxy")) {
        if (!bufs.count("det_score") || !bufs.count("det_class")) {
            throw Malformed("detections", "det_xyxy without det_score and det_class");
        }
        const Buffer& xyxy = bufs.at("det_xyxy");
        if (xyxy.ndim() != 2 || xyxy.shape[1] != 4) throw Malformed("detections", "det_xyxy must be (N, 4)");
        const std::pair<const char*, DType> dets[] = {
            {"det_xyxy", DType::float32}, {"det_score", DType::float32},
            {"det_class", DType::int32}, {"det_track", DType::int32}, {"det_mask", DType::uint8}};
        for (const auto& [name, want] : dets) {
            auto b = bufs.find(name);
            if (b == bufs.end()) continue;
            if (std::string(name) == "det_mask") {  // (1.3) (N, mh, B), mh and B > 0 (§5.3)
                const Buffer& m = b->second;
                if (m.ndim() != 3 || m.shape[0] != xyxy.shape[0] || m.shape[1] == 0 || m.shape[2] == 0) {
                    throw Malformed("detections", "det_mask must be (N, mh, B) with N of det_xyxy, mh and B > 0");
                }
            } else if (std::string(name) != "det_xyxy" &&
                       (b->second.ndim() != 1 || b->second.shape[0] != xyxy.shape[0])) {
                throw Malformed("detections", std::string(name) + " must be (N,) with N of det_xyxy");
            }
            if (b->second.dtype != want) throw Malformed("detections", std::string(name) + " has the wrong dtype");
            take(name);
        }
    }
    const std::pair<const char*, std::size_t> tokens[] = {
        {"ctx", 1}, {"patches", 3}, {"patch_values", 2}, {"patch_bias", 1}, {"content", 3}, {"query_ctx", 2}};
    for (const auto& [name, ndim] : tokens) {
        auto b = bufs.find(name);
        if (b == bufs.end()) continue;
        if (b->second.ndim() != ndim || !is_token_dtype(b->second.dtype)) {
            throw Malformed("tokens", std::string(name) + " must have " + std::to_string(ndim) +
                                          " dimensions and dtype float16 or float32");
        }
        take(name);
    }
    const std::pair<const char*, DType> others[] = {
        {"patch_index", DType::int32}, {"query_score", DType::float32}, {"preview", DType::uint8},
        {"code_index", DType::int32}, {"code_values", DType::int16}};
    for (const auto& [name, want] : others) {
        auto b = bufs.find(name);
        if (b == bufs.end()) continue;
        if (b->second.ndim() != 1 || b->second.dtype != want) {
            throw Malformed("tokens", std::string(name) + " must be 1-dimensional " + dtype_name(want));
        }
        take(name);
    }
    if (auto c = bufs.find("codes"); c != bufs.end()) {  // (1.2) the code grid (§5.2)
        if (c->second.ndim() != 2 || c->second.dtype != DType::int16) {
            throw Malformed("tokens", "codes must be 2-dimensional int16");
        }
        take("codes");
    }
    bool qc = bufs.count("query_ctx") > 0, qs = bufs.count("query_score") > 0;
    if (qc != qs || (qc && bufs.at("query_ctx").shape[0] != bufs.at("query_score").shape[0])) {
        throw Malformed("tokens", "query_ctx (Q, D) and query_score (Q,) go together");
    }
    f.grid = parse_grid(h, bufs);
    check_codes(f.grid, bufs);
    for (const char* name : known) f.buffers.emplace(name, std::move(bufs.at(name)));
    return f;
}

inline Message decode_views(const PartView* parts, std::size_t n) {
    if (n < 2) throw Malformed("parts", std::to_string(n) + " parts");
    json h = parse_header(parts[1]);
    auto v = h.find("v");
    if (v == h.end() || !v->is_array() || v->size() != 2 || !is_int((*v)[0]) || !is_int((*v)[1])) {
        throw Malformed("version", "v " + (v == h.end() ? std::string("missing") : shorten(*v)));
    }
    if (!fits_int64((*v)[0]) || (*v)[0].get<std::int64_t>() != kMajor) {
        throw Malformed("unsupported-major", "major version " + (*v)[0].dump());
    }
    auto s = h.find("stream");
    if (s == h.end() || !s->is_string() || !valid_stream_id(s->get<std::string>())) {
        throw Malformed("stream", "stream " + (s == h.end() ? std::string("missing") : shorten(*s)));
    }
    std::string stream = s->get<std::string>();
    std::string topic(reinterpret_cast<const char*>(parts[0].data), parts[0].size);
    if (topic != stream + "/") throw Malformed("topic", "topic '" + topic.substr(0, 80) + "' for stream " + stream);
    std::int64_t seq = get_int(h, "seq", 0);
    std::string kind = get_str(h, "kind");
    auto bufs = parse_buffers(h, parts + 2, n - 2);
    if (kind == "frame") return parse_frame(h, std::move(bufs));
    if (!bufs.empty()) throw Malformed("buffers", "a '" + kind.substr(0, 40) + "' message carries no buffers");
    if (kind == "status") {
        Status m{stream, seq, {}, {}, 0};
        m.state = get_str(h, "state", &kStates);
        m.detail = get_str(h, "detail");
        m.t_ns = get_int(h, "t_ns", std::nullopt);
        return m;
    }
    if (kind == "eos") {
        Eos m{stream, seq, 0, {}, {}};
        m.frames = get_int(h, "frames", 0);
        m.reason = get_str(h, "reason", &kReasons);
        m.detail = get_str(h, "detail");
        return m;
    }
    if (kind == "info") {
        Info m{stream, seq, {}, json::object(), std::nullopt, std::nullopt};
        m.policy = get_str(h, "policy", &kPolicies);
        m.models = get_obj(h, "models");
        auto w = h.find("worker");
        if (w != h.end() && !w->is_null()) m.worker = get_int(h, "worker", 0);
        m.streams = get_stream_ids(h, "streams");
        return m;
    }
    throw Malformed("kind", "unknown kind '" + kind.substr(0, 40) + "'");
}

}  // namespace detail

/// Decode one multipart message: `parts` is a sequence of byte strings (anything with data() and size()).
/// Throws Malformed with the code of the first rule of docs/protocol.md §9 that the message breaks.
template <class Parts>
Message decode(const Parts& parts) {
    std::vector<detail::PartView> views;
    for (const auto& p : parts) {
        views.push_back({reinterpret_cast<const std::uint8_t*>(p.data()), static_cast<std::size_t>(p.size())});
    }
    return detail::decode_views(views.data(), views.size());
}

// --------------------------------------------------------------------------------------- JSON form

namespace detail {

inline json nested(const Buffer& b, std::size_t dim, std::size_t& flat) {
    if (dim == b.shape.size()) {
        std::size_t i = flat++;
        return b.is_float() ? json(b.f64(i)) : json(b.i64(i));
    }
    json arr = json::array();
    for (std::uint64_t k = 0; k < b.shape[dim]; ++k) arr.push_back(nested(b, dim + 1, flat));
    return arr;
}

}  // namespace detail

/// `{"dtype", "shape", "data"}` as in the test vectors; without data, `"crc32"` of the bytes instead.
inline json buffer_json(const Buffer& b, bool with_data = true) {
    json out = {{"dtype", dtype_name(b.dtype)}, {"shape", b.shape}};
    if (with_data) {
        std::size_t flat = 0;
        out["data"] = detail::nested(b, 0, flat);
    } else {
        out["crc32"] = crc32(b.bytes.data(), b.bytes.size());
    }
    return out;
}

/// The decoded content in the form of the test vectors' expected.json `content`.
inline json to_json(const Message& message, bool with_data = true) {
    json out = {{"stream", stream_of(message)}, {"seq", seq_of(message)}, {"kind", kind_of(message)}};
    json buffers = json::object();
    if (const auto* f = std::get_if<Frame>(&message)) {
        out["frame"] = f->frame;
        out["pts_s"] = f->pts_s ? json(*f->pts_s) : json(nullptr);
        out["size_wh"] = {f->width, f->height};
        out["policy"] = f->policy;
        out["dropped"] = f->dropped;
        out["t_ns"] = {{"capture", f->t_ns.capture}, {"decode", f->t_ns.decode}, {"infer", f->t_ns.infer},
                       {"publish", f->t_ns.publish}};
        out["models"] = json(f->models);
        out["damaged"] = f->damaged;
        out["reused"] = f->reused;
        if (f->grid) {
            out["grid"] = {{"kind", grid_kind_name(f->grid->kind)}, {"n", f->grid->n}, {"hw", {f->grid->gh, f->grid->gw}}};
        }
        for (const auto& [name, b] : f->buffers) buffers[name] = buffer_json(b, with_data);
    } else if (const auto* s = std::get_if<Status>(&message)) {
        out["state"] = s->state;
        out["detail"] = s->detail;
        out["t_ns"] = s->t_ns;
    } else if (const auto* e = std::get_if<Eos>(&message)) {
        out["frames"] = e->frames;
        out["reason"] = e->reason;
        out["detail"] = e->detail;
    } else if (const auto* i = std::get_if<Info>(&message)) {
        out["policy"] = i->policy;
        out["models"] = i->models;
        out["worker"] = i->worker ? json(*i->worker) : json(nullptr);
        out["streams"] = i->streams ? json(*i->streams) : json(nullptr);
    }
    out["buffers"] = buffers;
    return out;
}

// --------------------------------------------------------------------------------------- patch grids

/// A stream's full patch grid, held at the wire precision (float16 or float32) of its keyframe.
struct Grid {
    DType dtype = DType::float16;
    std::int64_t gh = 0, gw = 0, dim = 0;
    std::vector<std::uint8_t> bytes;  // (gh, gw, dim), C order, little-endian

    Buffer as_buffer() const {
        Buffer b;
        b.name = "patches";
        b.dtype = dtype;
        b.shape = {static_cast<std::uint64_t>(gh), static_cast<std::uint64_t>(gw), static_cast<std::uint64_t>(dim)};
        b.bytes = bytes;
        return b;
    }
    float get(std::size_t i) const {
        if (dtype == DType::float16) {
            std::uint16_t h;
            std::memcpy(&h, bytes.data() + 2 * i, 2);
            return half_to_float(h);
        }
        float f;
        std::memcpy(&f, bytes.data() + 4 * i, 4);
        return f;
    }
    void set(std::size_t i, float v) {  // stored back at the grid's precision (round to nearest)
        if (dtype == DType::float16) {
            std::uint16_t h = float_to_half(v);
            std::memcpy(bytes.data() + 2 * i, &h, 2);
        } else {
            std::memcpy(bytes.data() + 4 * i, &v, 4);
        }
    }
};

/// One stream's grid, rebuilt from the updates of §5.1: apply() gives the full grid after a frame's
/// update, or nullptr while out of sync (a missed update: wait for the next key, ask for one).
class GridRebuilder {
public:
    const Grid* apply(const Frame& f) {
        if (!f.grid) {  // a grid sent whole in every frame (no compression), or none at all
            const Buffer* p = f.buffer("patches");
            if (!p) return nullptr;
            plain_ = from_patches(*p);
            return &plain_;
        }
        const GridField& g = *f.grid;
        if (g.kind == GridKind::key) {
            grid_ = from_patches(*f.buffer("patches"));
            n_ = g.n;
            in_sync_ = true;
            return &grid_;
        }
        if (!in_sync_ || g.n != n_ + 1 || grid_.gh != g.gh || grid_.gw != g.gw || !fits(f)) {
            if (in_sync_) ++lost_sync_;
            in_sync_ = false;
            return nullptr;
        }
        if (g.kind == GridKind::delta) {
            const Buffer& index = *f.buffer("patch_index");
            const Buffer& values = *f.buffer("patch_values");
            const std::size_t d = static_cast<std::size_t>(grid_.dim);
            if (const Buffer* bias = f.buffer("patch_bias")) {  // p <- wire(float32(p) + float32(bias))
                std::vector<float> b(d);
                for (std::size_t j = 0; j < d; ++j) b[j] = bias->f32(j);
                const std::size_t cells = static_cast<std::size_t>(grid_.gh * grid_.gw);
                for (std::size_t c = 0; c < cells; ++c) {
                    for (std::size_t j = 0; j < d; ++j) {
                        grid_.set(c * d + j, grid_.get(c * d + j) + b[j]);  // IEEE single (SSE: no excess precision)
                    }
                }
            }
            for (std::size_t k = 0; k < index.size(); ++k) {
                std::size_t cell = static_cast<std::size_t>(index.i64(k));
                if (values.dtype == grid_.dtype) {
                    std::size_t w = itemsize(grid_.dtype) * d;
                    std::memcpy(grid_.bytes.data() + cell * w, values.bytes.data() + k * w, w);
                } else {
                    for (std::size_t j = 0; j < d; ++j) grid_.set(cell * d + j, values.f32(k * d + j));
                }
            }
        }
        n_ = g.n;
        return &grid_;
    }

    bool in_sync() const { return in_sync_; }
    std::int64_t n() const { return n_; }
    std::uint64_t lost_sync() const { return lost_sync_; }  // times an update could not be applied

private:
    static Grid from_patches(const Buffer& p) {
        Grid g;
        g.dtype = p.dtype;
        g.gh = static_cast<std::int64_t>(p.shape[0]);
        g.gw = static_cast<std::int64_t>(p.shape[1]);
        g.dim = static_cast<std::int64_t>(p.shape[2]);
        g.bytes = p.bytes;
        return g;
    }
    bool fits(const Frame& f) const {  // a delta's D must be the held grid's
        const Buffer* values = f.buffer("patch_values");
        return !values || static_cast<std::int64_t>(values->shape[1]) == grid_.dim;
    }

    Grid grid_, plain_;
    std::int64_t n_ = -1;
    bool in_sync_ = false;
    std::uint64_t lost_sync_ = 0;
};

// --------------------------------------------------------------------------------------- sequences

struct GapReport {
    std::uint64_t missing = 0;                                // messages that never arrived
    std::vector<std::pair<std::int64_t, std::int64_t>> gaps;  // (last seq seen, next seq seen)
    std::uint64_t restarts = 0;                               // seq not above the previous one
};

/// §6: per stream, k > 1 after the previous seq is a gap of k - 1 messages; a seq not above the
/// previous one is a restarted publisher (counting starts afresh); a late joiner's first seq is no gap.
class SequenceTracker {
public:
    struct Step {
        std::int64_t missed = 0;  // messages missed just before this one
        bool restarted = false;
    };
    Step observe(const std::string& stream, std::int64_t seq) {
        Step step;
        auto it = last_.find(stream);
        if (it != last_.end()) {
            GapReport& r = reports_[stream];
            if (seq > it->second + 1) {
                step.missed = seq - it->second - 1;
                r.missing += static_cast<std::uint64_t>(step.missed);
                r.gaps.emplace_back(it->second, seq);
            } else if (seq <= it->second) {
                step.restarted = true;
                ++r.restarts;
            }
        }
        last_[stream] = seq;
        return step;
    }
    const std::map<std::string, GapReport>& reports() const { return reports_; }
    std::uint64_t missing() const {
        std::uint64_t n = 0;
        for (const auto& [s, r] : reports_) n += r.missing;
        return n;
    }

private:
    std::map<std::string, std::int64_t> last_;
    std::map<std::string, GapReport> reports_;
};

// --------------------------------------------------------------------------------------- reader

/// Decoding, grid rebuilding and sequence tracking for every stream of one subscription.
class Reader {
public:
    struct Event {
        Message message;
        const Grid* grid = nullptr;  // frames: the full patch grid after this frame (nullptr: none / out of sync)
        bool out_of_sync = false;    // a frame with a grid update that could not be applied: ask for a key
        std::int64_t missed = 0;     // messages of this stream missed just before this one (§6)
        bool restarted = false;
    };

    /// Throws Malformed (and changes no state) for a malformed message.
    template <class Parts>
    Event read(const Parts& parts) {
        Message m = decode(parts);
        const std::string stream = stream_of(m);  // a copy: m moves into the event
        auto step = seqs_.observe(stream, seq_of(m));
        Event ev{std::move(m), nullptr, false, step.missed, step.restarted};
        streams_.insert(stream);
        if (const auto* f = std::get_if<Frame>(&ev.message)) {
            ended_.erase(stream);  // a frame after an eos: the stream started again
            ++frames_;
            ev.grid = grids_[stream].apply(*f);
            ev.out_of_sync = f->grid.has_value() && ev.grid == nullptr;
            if (ev.out_of_sync) ++unsynced_;
        } else if (std::holds_alternative<Eos>(ev.message)) {
            ended_.insert(stream);
        } else if (const auto* i = std::get_if<Info>(&ev.message)) {
            infos_[stream] = *i;
            if (i->streams) announced_.insert(i->streams->begin(), i->streams->end());
        }
        return ev;
    }

    /// Every stream seen and every stream an info announced (or, given, every stream wanted) has sent its eos.
    bool all_ended(const std::vector<std::string>& wanted = {}) const {
        if (wanted.empty()) {
            if (streams_.empty()) return false;
            for (const auto& s : streams_) {
                if (!ended_.count(s)) return false;
            }
            for (const auto& s : announced_) {  // (1.2) streams announced, not seen yet
                if (!ended_.count(s)) return false;
            }
            return true;
        }
        for (const auto& s : wanted) {
            if (!ended_.count(s)) return false;
        }
        return true;
    }
    const std::set<std::string>& streams() const { return streams_; }
    const std::set<std::string>& announced() const { return announced_; }  // (1.2) infos' `streams`
    const std::set<std::string>& ended() const { return ended_; }
    const std::map<std::string, Info>& infos() const { return infos_; }
    const SequenceTracker& sequences() const { return seqs_; }
    std::uint64_t frames() const { return frames_; }
    std::uint64_t unsynced() const { return unsynced_; }  // frames whose grid could not be rebuilt

private:
    SequenceTracker seqs_;
    std::map<std::string, GridRebuilder> grids_;
    std::map<std::string, Info> infos_;
    std::set<std::string> streams_, ended_, announced_;
    std::uint64_t frames_ = 0, unsynced_ = 0;
};

}  // namespace frametok
