// frametok-read: subscribe to a frametok publisher and print one line per message, rebuilding patch grids.
//
//   frametok-read ENDPOINT [--lossless] [--json] [--count N] [--stream ID]... [--credit N] [--timeout S]
//                 [--data] [--summary]
//   frametok-read --vector DIR [DIR...]
//
// Live (default): a SUB socket on the publisher's endpoint. --lossless: a DEALER on its lossless endpoint,
// joining with HELLO and granting CREDIT in batches (half the window, and whenever idle), as
// docs/protocol.md §8.1 says. A frame whose grid update cannot be applied (out of sync) asks for a
// keyframe (KEY, or a repeated subscription when live). Exits 0 when every stream has sent its eos
// (or after --count messages), 1 after --timeout seconds of silence, 2 on a usage error.
//
// --json: one JSON object per line: the decoded content in the form of the test vectors
// (docs/protocol-vectors/README.md), buffers with dtype, shape and crc32 (and data with --data), and for
// frames "patch_grid": the rebuilt full grid (dtype, shape, crc32, sum; null while out of sync), absent
// when the frame has no patch tokens; (1.3) with instance masks, "mask_areas": each detection's mask area in
// source-frame pixels (docs/protocol.md §5.3). "missed": messages of the stream missed just before this one.
// A malformed message prints {"kind": "malformed", "error": <§9 code>, "detail": ...} and is skipped.
//
// --vector DIR...: decode test-vector folders (part-0.bin, part-1.bin, ...) in the order given, one line
// each: {"vector", "valid": true, "content", "patch_grid"} or {"vector", "valid": false, "error", "detail"}.

#include <frametok/reader.hpp>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

using frametok::json;
using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }

std::string dumps(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

int usage(const std::string& why) {
    if (!why.empty()) std::cerr << "frametok-read: " << why << "\n";
    std::cerr << "usage: frametok-read ENDPOINT [--lossless] [--json] [--count N] [--stream ID]... [--credit N]\n"
                 "                     [--timeout S] [--data] [--summary]\n"
                 "       frametok-read --vector DIR [DIR...]\n";
    return 2;
}

json grid_json(const frametok::Grid& g, bool with_data) {
    frametok::Buffer b = g.as_buffer();
    json out = frametok::buffer_json(b, with_data);
    if (with_data) out["crc32"] = frametok::crc32(b.bytes.data(), b.bytes.size());
    double sum = 0;
    for (std::size_t i = 0; i < b.size(); ++i) sum += b.f64(i);
    out["sum"] = sum;
    return out;
}

json mask_areas(const frametok::Frame& f) {
    json areas = json::array();
    for (std::int64_t i = 0; i < f.detections(); ++i) areas.push_back(f.mask_area(static_cast<std::size_t>(i)));
    return areas;
}

json event_json(const frametok::Reader::Event& ev, bool with_data) {
    json out = frametok::to_json(ev.message, with_data);
    if (const auto* f = std::get_if<frametok::Frame>(&ev.message)) {
        if (f->buffer("det_mask")) out["mask_areas"] = mask_areas(*f);
        if (ev.grid) {
            out["patch_grid"] = grid_json(*ev.grid, with_data);
        } else if (f->grid) {
            out["patch_grid"] = nullptr;  // out of sync: no grid for this frame
        }
    }
    if (ev.missed) out["missed"] = ev.missed;
    if (ev.restarted) out["restarted"] = true;
    return out;
}

std::string event_text(const frametok::Reader::Event& ev) {
    std::ostringstream s;
    s << frametok::stream_of(ev.message) << " seq " << frametok::seq_of(ev.message) << " "
      << frametok::kind_of(ev.message);
    if (const auto* f = std::get_if<frametok::Frame>(&ev.message)) {
        s << " " << f->frame << " pts " << (f->pts_s ? std::to_string(*f->pts_s) : std::string("-"));
        if (f->detections() >= 0) s << " detections " << f->detections();
        if (f->buffer("det_mask")) {
            s << " masks " << f->mask_hw().first << "x" << f->mask_hw().second << " areas";
            for (std::int64_t i = 0; i < f->detections(); ++i) s << " " << f->mask_area(static_cast<std::size_t>(i));
        }
        if (f->grid) s << " grid " << frametok::grid_kind_name(f->grid->kind) << " n=" << f->grid->n;
        if (ev.grid) {
            s << " patches " << ev.grid->gh << "x" << ev.grid->gw << "x" << ev.grid->dim << " crc32 "
              << frametok::crc32(ev.grid->bytes.data(), ev.grid->bytes.size());
        } else if (f->grid) {
            s << " (out of sync)";
        }
    } else if (const auto* st = std::get_if<frametok::Status>(&ev.message)) {
        s << " " << st->state << (st->detail.empty() ? "" : " " + st->detail);
    } else if (const auto* e = std::get_if<frametok::Eos>(&ev.message)) {
        s << " " << e->reason << " after " << e->frames << " frames" << (e->detail.empty() ? "" : ": " + e->detail);
    } else if (const auto* i = std::get_if<frametok::Info>(&ev.message)) {
        s << " " << i->policy << " models";
        for (const auto& [role, m] : i->models.items()) s << " " << role;
    }
    if (ev.missed) s << " (missed " << ev.missed << ")";
    return s.str();
}

std::string read_file(const std::string& path, bool& ok) {
    std::ifstream in(path, std::ios::binary);
    ok = static_cast<bool>(in);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

int run_vectors(const std::vector<std::string>& dirs) {
    frametok::Reader reader;
    for (const auto& dir : dirs) {
        std::vector<std::string> parts;
        for (int i = 0;; ++i) {
            bool ok = false;
            std::string part = read_file(dir + "/part-" + std::to_string(i) + ".bin", ok);
            if (!ok) break;
            parts.push_back(std::move(part));
        }
        std::string name = dir;
        while (name.size() > 1 && name.back() == '/') name.pop_back();
        name = name.substr(name.find_last_of('/') + 1);
        if (parts.empty()) {
            std::cerr << "frametok-read: no part-0.bin in " << dir << "\n";
            return 2;
        }
        json line = {{"vector", name}};
        try {
            auto ev = reader.read(parts);
            line["valid"] = true;
            line["content"] = frametok::to_json(ev.message, true);
            if (const auto* f = std::get_if<frametok::Frame>(&ev.message)) {
                if (f->buffer("det_mask")) line["mask_areas"] = mask_areas(*f);
                if (ev.grid) {
                    line["patch_grid"] = grid_json(*ev.grid, true);
                } else if (f->grid) {
                    line["patch_grid"] = nullptr;
                }
            }
        } catch (const frametok::Malformed& e) {
            line["valid"] = false;
            line["error"] = e.code();
            line["detail"] = e.what();
        }
        std::cout << dumps(line) << "\n";
    }
    return 0;
}

struct Options {
    std::string endpoint;
    bool lossless = false, as_json = false, data = false, summary = false;
    long long count = 0;
    long credit = 32;
    double timeout_s = 0;
    std::vector<std::string> streams;
};

class Client {
public:
    explicit Client(const Options& o)
        : o_(o), sock_(ctx_, o.lossless ? zmq::socket_type::dealer : zmq::socket_type::sub) {
        if (o_.lossless) {
            sock_.set(zmq::sockopt::linger, 1000);  // so that the last CREDIT and the BYE leave
            sock_.set(zmq::sockopt::rcvhwm, 0);     // bounded by the credit window
        } else {
            sock_.set(zmq::sockopt::linger, 0);
            if (o_.streams.empty()) {
                sock_.set(zmq::sockopt::subscribe, "");
            } else {
                for (const auto& s : o_.streams) sock_.set(zmq::sockopt::subscribe, s + "/");
            }
        }
        sock_.connect(o_.endpoint);
        if (o_.lossless) hello();
    }

    int run() {
        const long half = std::max(1L, o_.credit / 2);
        long long printed = 0;
        auto last_message = Clock::now();
        while (!g_stop) {
            std::vector<zmq::message_t> parts;
            bool got = false;
            try {
                got = zmq::recv_multipart(sock_, std::back_inserter(parts), zmq::recv_flags::dontwait).has_value();
            } catch (const zmq::error_t& e) {
                if (e.num() == EINTR) continue;
                throw;
            }
            if (!got) {
                zmq::pollitem_t item{sock_.handle(), 0, ZMQ_POLLIN, 0};
                int ready = 0;
                try {
                    ready = zmq::poll(&item, 1, std::chrono::milliseconds(100));
                } catch (const zmq::error_t& e) {
                    if (e.num() == EINTR) continue;
                    throw;
                }
                if (ready) continue;
                idle();
                if (o_.timeout_s > 0 && std::chrono::duration<double>(Clock::now() - last_message).count() >= o_.timeout_s) {
                    std::cerr << "frametok-read: no message for " << o_.timeout_s << " s\n";
                    finish();
                    return 1;
                }
                continue;
            }
            last_message = Clock::now();
            if (o_.lossless && ++consumed_ >= half) grant();
            try {
                auto ev = reader_.read(parts);
                if (ev.out_of_sync) ask_key(frametok::stream_of(ev.message));
                std::cout << (o_.as_json ? dumps(event_json(ev, o_.data)) : event_text(ev)) << "\n" << std::flush;
            } catch (const frametok::Malformed& e) {
                ++malformed_;
                if (o_.as_json) {
                    std::cout << dumps({{"kind", "malformed"}, {"error", e.code()}, {"detail", e.what()}}) << "\n"
                              << std::flush;
                } else {
                    std::cout << "malformed message skipped: " << e.what() << "\n" << std::flush;
                }
            }
            ++printed;
            if ((o_.count > 0 && printed >= o_.count) || reader_.all_ended(o_.streams)) break;
        }
        finish();
        return 0;
    }

private:
    bool control(std::vector<zmq::const_buffer> parts) {
        try {
            return zmq::send_multipart(sock_, parts, zmq::send_flags::dontwait).has_value();
        } catch (const zmq::error_t&) {
            return false;
        }
    }
    void hello() {
        json streams = o_.streams.empty() ? json(nullptr) : json(o_.streams);
        std::string body = dumps({{"v", {frametok::kMajor, frametok::kMinor}}, {"streams", streams}, {"credit", o_.credit}});
        control({zmq::str_buffer("HELLO"), zmq::buffer(body)});
        last_hello_ = Clock::now();
    }
    void grant() {
        if (!consumed_) return;
        std::string k = std::to_string(consumed_);
        if (control({zmq::str_buffer("CREDIT"), zmq::buffer(k)})) consumed_ = 0;
    }
    void idle() {
        if (!o_.lossless) return;
        grant();
        if (Clock::now() - last_hello_ >= std::chrono::seconds(1)) hello();  // "still here" (§8.1)
    }
    void ask_key(const std::string& stream) {
        auto now = Clock::now();
        auto it = key_asked_.find(stream);
        if (it != key_asked_.end() && now - it->second < std::chrono::seconds(1)) return;
        key_asked_[stream] = now;
        if (o_.lossless) {
            control({zmq::str_buffer("KEY"), zmq::buffer(stream)});
        } else {  // a repeated subscription reaches the publisher; removing it leaves ours as it was
            sock_.set(zmq::sockopt::subscribe, stream + "/");
            sock_.set(zmq::sockopt::unsubscribe, stream + "/");
        }
    }
    void finish() {
        if (o_.lossless) {
            grant();
            control({zmq::str_buffer("BYE")});
        }
        if (o_.summary) {
            json gaps = json::object();
            for (const auto& [s, r] : reader_.sequences().reports()) gaps[s] = r.missing;
            std::cerr << dumps({{"frames", reader_.frames()}, {"malformed", malformed_},
                                {"missing", reader_.sequences().missing()}, {"gaps", gaps},
                                {"unsynced", reader_.unsynced()}, {"streams", reader_.streams()},
                                {"ended", reader_.ended()}})
                      << "\n";
        }
    }

    Options o_;
    zmq::context_t ctx_;
    zmq::socket_t sock_;
    frametok::Reader reader_;
    long consumed_ = 0;
    std::uint64_t malformed_ = 0;
    Clock::time_point last_hello_{};
    std::map<std::string, Clock::time_point> key_asked_;
};

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty()) return usage("");
    if (args[0] == "--vector") {
        if (args.size() < 2) return usage("--vector needs at least one folder");
        return run_vectors(std::vector<std::string>(args.begin() + 1, args.end()));
    }
    Options o;
    auto number = [&](std::size_t& i, const char* what) -> std::string {
        if (i + 1 >= args.size()) throw std::invalid_argument(std::string(what) + " needs a value");
        return args[++i];
    };
    try {
        for (std::size_t i = 0; i < args.size(); ++i) {
            const std::string& a = args[i];
            if (a == "--lossless") {
                o.lossless = true;
            } else if (a == "--json") {
                o.as_json = true;
            } else if (a == "--data") {
                o.data = true;
            } else if (a == "--summary") {
                o.summary = true;
            } else if (a == "--count") {
                o.count = std::stoll(number(i, "--count"));
            } else if (a == "--credit") {
                o.credit = std::stol(number(i, "--credit"));
            } else if (a == "--timeout") {
                o.timeout_s = std::stod(number(i, "--timeout"));
            } else if (a == "--stream") {
                o.streams.push_back(number(i, "--stream"));
            } else if (a == "-h" || a == "--help") {
                usage("");
                return 0;
            } else if (!a.empty() && a[0] == '-') {
                return usage("unknown option " + a);
            } else if (o.endpoint.empty()) {
                o.endpoint = a;
            } else {
                return usage("one endpoint only");
            }
        }
    } catch (const std::exception& e) {
        return usage(e.what());
    }
    if (o.endpoint.empty()) return usage("an ENDPOINT is needed");
    if (o.credit < 1) return usage("--credit must be >= 1");
    for (const auto& s : o.streams) {
        if (!frametok::detail::valid_stream_id(s)) return usage("not a stream id: " + s);
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    try {
        Client client(o);
        return client.run();
    } catch (const zmq::error_t& e) {
        std::cerr << "frametok-read: " << e.what() << "\n";
        return 1;
    }
}
